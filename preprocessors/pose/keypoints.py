"""Detected people and the OpenPose JSON (the POSE_KEYPOINT layout comfyui_controlnet_aux
emits, which pose editors and savers read). Coordinates are fractions of the image's
width and height; a missing body keypoint is None and is written as 0, 0, 0."""
from dataclasses import dataclass
from typing import Optional

Point = Optional[tuple[float, float]]


@dataclass
class Person:
    body: list[Point]                 # 18 OpenPose body keypoints
    left_hand: Optional[list[Point]] = None    # 21 each, None when not detected/asked for
    right_hand: Optional[list[Point]] = None
    face: Optional[list[Point]] = None         # 68 (DWPose) or up to 70 (OpenPose) landmarks
    feet: Optional[list[Point]] = None         # 6 (DWPose only; not drawn, as in DWPose)


def _flat(points: Optional[list[Point]]) -> Optional[list[float]]:
    if not points:
        return None
    return [v for p in points for v in ((float(p[0]), float(p[1]), 1.0) if p is not None else (0.0, 0.0, 0.0))]


def pose_json(people: list[Person], canvas_height: int, canvas_width: int) -> dict:
    """One image's detections in OpenPose's people[] layout."""
    return {
        "people": [{"pose_keypoints_2d": _flat(p.body), "face_keypoints_2d": _flat(p.face),
                    "hand_left_keypoints_2d": _flat(p.left_hand), "hand_right_keypoints_2d": _flat(p.right_hand)}
                   for p in people],
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    }
