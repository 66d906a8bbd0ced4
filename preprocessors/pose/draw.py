"""Pose drawing exactly as ControlNet's openpose models were trained (lllyasviel's
annotator): limbs as filled ellipses 4 px wide in 60% of the 18 OpenPose colours, joints as
4 px discs in full colour, hand bones 2 px wide in hues around the HSV circle with red
joints, face landmarks as 3 px white discs. Drawn with OpenCV, as the reference is, so the
pixels are the same; sizes are in pixels of the detection canvas."""
import colorsys
import math

import cv2
import numpy as np

from .keypoints import Person, Point

# 1-based OpenPose body indices (nose, neck, r-shoulder, ...), as in the reference
LIMBS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13),
         (13, 14), (2, 1), (1, 15), (15, 17), (1, 16), (16, 18)]
COLOURS = [(255, 0, 0), (255, 85, 0), (255, 170, 0), (255, 255, 0), (170, 255, 0), (85, 255, 0), (0, 255, 0),
           (0, 255, 85), (0, 255, 170), (0, 255, 255), (0, 170, 255), (0, 85, 255), (0, 0, 255), (85, 0, 255),
           (170, 0, 255), (255, 0, 255), (255, 0, 170), (255, 0, 85)]
HAND_EDGES = [(0, 1), (1, 2), (2, 3), (3, 4), (0, 5), (5, 6), (6, 7), (7, 8), (0, 9), (9, 10), (10, 11), (11, 12),
              (0, 13), (13, 14), (14, 15), (15, 16), (0, 17), (17, 18), (18, 19), (19, 20)]
HAND_COLOURS = [np.array(colorsys.hsv_to_rgb(i / len(HAND_EDGES), 1.0, 1.0)) * 255 for i in range(len(HAND_EDGES))]
STICK_WIDTH = 4
EPS = 0.01  # points at (or left/above of) the origin are "not detected" for hands and faces


def draw_body(canvas: np.ndarray, body: list[Point]) -> None:
    """Limbs first, then joints on top."""
    h, w = canvas.shape[:2]
    for (a, b), colour in zip(LIMBS, COLOURS):
        p, q = body[a - 1], body[b - 1]
        if p is None or q is None:
            continue
        xs = np.array([p[0], q[0]]) * float(w)
        ys = np.array([p[1], q[1]]) * float(h)
        length = ((ys[0] - ys[1]) ** 2 + (xs[0] - xs[1]) ** 2) ** 0.5
        angle = math.degrees(math.atan2(ys[0] - ys[1], xs[0] - xs[1]))
        polygon = cv2.ellipse2Poly((int(np.mean(xs)), int(np.mean(ys))), (int(length / 2), STICK_WIDTH),
                                   int(angle), 0, 360, 1)
        cv2.fillConvexPoly(canvas, polygon, [int(float(c) * 0.6) for c in colour])
    for point, colour in zip(body, COLOURS):
        if point is not None:
            cv2.circle(canvas, (int(point[0] * w), int(point[1] * h)), 4, colour, thickness=-1)


def draw_hand(canvas: np.ndarray, hand: list[Point] | None) -> None:
    if not hand:
        return
    h, w = canvas.shape[:2]
    pixels = [None if p is None else (int(p[0] * w), int(p[1] * h)) for p in hand]
    for (a, b), colour in zip(HAND_EDGES, HAND_COLOURS):
        p, q = pixels[a], pixels[b]
        if p is not None and q is not None and min(*p, *q) > EPS:
            cv2.line(canvas, p, q, colour, thickness=2)
    for p in pixels:
        if p is not None and min(p) > EPS:
            cv2.circle(canvas, p, 4, (0, 0, 255), thickness=-1)


def draw_face(canvas: np.ndarray, face: list[Point] | None) -> None:
    if not face:
        return
    h, w = canvas.shape[:2]
    for p in face:
        if p is not None:
            x, y = int(p[0] * w), int(p[1] * h)
            if x > EPS and y > EPS:
                cv2.circle(canvas, (x, y), 3, (255, 255, 255), thickness=-1)


def draw_people(people: list[Person], height: int, width: int, body: bool = True, hands: bool = True,
                face: bool = True) -> np.ndarray:
    """RGB uint8 (height, width, 3) canvas, each person drawn whole in turn (body, left
    hand, right hand, face), as comfyui_controlnet_aux draws OpenPose and DWPose."""
    canvas = np.zeros((height, width, 3), dtype=np.uint8)
    for person in people:
        if body:
            draw_body(canvas, person.body)
        if hands:
            draw_hand(canvas, person.left_hand)
            draw_hand(canvas, person.right_hand)
        if face:
            draw_face(canvas, person.face)
    return canvas
