"""From ComfyUI image batches to pose guides and back, shared by OpenPose and DWPose:
images go to the detector as RGB uint8 at the detection size; the people found are drawn
on a canvas of that size (line widths are what ControlNet saw in training at that size),
and the drawing is resized to the input's size bilinearly, as the reference does."""
from typing import Callable

import cv2
import numpy as np
import torch

from ..image_ops import resize, to_rgb
from ..resolution import detect_size
from .draw import draw_people
from .keypoints import Person, pose_json


def to_detection_uint8(images: torch.Tensor, detect_resolution: int) -> np.ndarray:
    """(B, C, H, W) 0..1 -> (B, h, w, 3) RGB uint8 at the detection size."""
    h, w = detect_size(*images.shape[-2:], detect_resolution)
    small = resize(to_rgb(images.float()), h, w)
    return (small * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()


def pose_guides(detect: Callable[[np.ndarray], list[list[Person]]], images: torch.Tensor, detect_resolution: int,
                body: bool, hands: bool, face: bool, pixels: bool = False,
                before_chunk: Callable[[int], None] = lambda done: None,
                chunk: int = 4) -> tuple[torch.Tensor, list[dict]]:
    """(B, C, H, W) -> drawn guides (B, 3, H, W) 0..1 and one OpenPose JSON dict per image
    (coordinates as fractions, or pixels of the input with `pixels`).
    `before_chunk(images done)` runs before each chunk (progress, interruption)."""
    height, width = images.shape[-2:]
    maps, poses = [], []
    for start in range(0, images.shape[0], chunk):
        before_chunk(start)
        small = to_detection_uint8(images[start:start + chunk], detect_resolution)
        for found in detect(small):
            canvas = draw_people(found, small.shape[1], small.shape[2], body, hands, face)
            maps.append(cv2.resize(canvas, (width, height), interpolation=cv2.INTER_LINEAR))
            poses.append(pose_json(found, height, width, pixels))
    before_chunk(images.shape[0])
    return torch.from_numpy(np.stack(maps)).permute(0, 3, 1, 2).float() / 255.0, poses
