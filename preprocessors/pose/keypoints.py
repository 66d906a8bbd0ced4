"""Detected people and the OpenPose JSON (the POSE_KEYPOINT layout comfyui_controlnet_aux
emits, which pose editors and savers read). Coordinates are kept as fractions of the
image's width and height; a missing keypoint is None and is written as 0, 0, 0."""
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


def _flat(points: Optional[list[Point]], sx: float, sy: float) -> Optional[list[float]]:
    if not points:
        return None
    return [v for p in points
            for v in ((float(p[0]) * sx, float(p[1]) * sy, 1.0) if p is not None else (0.0, 0.0, 0.0))]


def pose_json(people: list[Person], canvas_height: int, canvas_width: int, pixels: bool = False) -> dict:
    """One image's detections in OpenPose's people[] layout. comfyui_controlnet_aux writes
    OpenPose's points as fractions of the canvas and DWPose's in canvas pixels (`pixels`)."""
    sx, sy = (canvas_width, canvas_height) if pixels else (1.0, 1.0)
    return {
        "people": [{"pose_keypoints_2d": _flat(p.body, sx, sy), "face_keypoints_2d": _flat(p.face, sx, sy),
                    "hand_left_keypoints_2d": _flat(p.left_hand, sx, sy),
                    "hand_right_keypoints_2d": _flat(p.right_hand, sx, sy)}
                   for p in people],
        "canvas_height": canvas_height,
        "canvas_width": canvas_width,
    }
