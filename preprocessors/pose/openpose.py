"""OpenPose detection: body (18 keypoints), then hands and face in boxes placed from the
body, as lllyasviel's annotator does it. The networks run batched on the model's device
(every image of a batch, every hand crop of a scale, every face crop together); peak
finding and grouping are the reference's, on the CPU. Images are RGB uint8 (H, W, 3) at
detection size; the networks see them as BGR, as they were trained."""
from dataclasses import dataclass
from typing import Optional

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from . import openpose_decode as dec
from .keypoints import Person

BODY_BOX = 368       # the body network sees the image at half of 368 px high
HAND_SCALES = (0.5, 1.0, 1.5, 2.0)  # hand crops at 184, 368, 552 and 736 px, averaged
HAND_MAP = 128       # hand maps are averaged at 128 x 128
FACE_SIZE = 384
CHUNK = 4            # crops per forward pass


@dataclass
class OpenPoseNets:
    body: torch.nn.Module
    hand: Optional[torch.nn.Module] = None
    face: Optional[torch.nn.Module] = None
    device: torch.device = torch.device("cpu")


def _to_input(images: np.ndarray, device) -> torch.Tensor:
    """(N, H, W, 3) uint8 BGR -> (N, 3, H, W) float BGR / 256 - 0.5, as the networks were trained."""
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device).float() / 256 - 0.5


def _forward(net, batch: np.ndarray, device) -> list:
    """Network outputs for a stack of equal-size images, in chunks, as numpy on the CPU."""
    outs = []
    with torch.no_grad():
        for i in range(0, len(batch), CHUNK):
            out = net(_to_input(batch[i:i + CHUNK], device))
            outs.append([o.cpu().numpy() for o in out] if isinstance(out, tuple) else [out.cpu().numpy()])
    return [np.concatenate(parts) for parts in zip(*outs)]


def body_maps(net, images_bgr: np.ndarray, device) -> list[tuple[np.ndarray, np.ndarray]]:
    """(B, H, W, 3) BGR -> per image (heatmaps (H, W, 19), PAFs (H, W, 38)) in float64."""
    h, w = images_bgr.shape[1:3]
    scale = 0.5 * BODY_BOX / h
    small = np.stack([cv2.resize(im, (int(w * scale), int(h * scale)),
                                 interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LANCZOS4)
                      for im in images_bgr])
    padded, pad = zip(*[dec.pad_right_down(im) for im in small])
    pafs, heats = _forward(net, np.stack(padded), device)
    size = padded[0].shape[:2]
    return [(dec.network_map_to_image(heat, size, pad[0], (h, w)).astype(np.float64),
             dec.network_map_to_image(paf, size, pad[0], (h, w)).astype(np.float64))
            for heat, paf in zip(heats, pafs)]


def hand_keypoints(net, crops: list[np.ndarray], device) -> list[np.ndarray]:
    """BGR hand crops -> (21, 2) crop pixels each (0, 0 = not found)."""
    if not crops:
        return []
    blurred = [cv2.GaussianBlur(c, (0, 0), 0.8) for c in crops]
    avg = [np.zeros((HAND_MAP, HAND_MAP, 22)) for _ in crops]
    for s in HAND_SCALES:
        side = s * BODY_BOX
        padded, pad = zip(*[dec.pad_right_down(dec.resize_map(c, side, side)) for c in blurred])
        (maps,) = _forward(net, np.stack(padded), device)
        for a, m in zip(avg, maps):
            a += dec.network_map_to_image(m, padded[0].shape[:2], pad[0], (HAND_MAP, HAND_MAP)) / len(HAND_SCALES)
    return [dec.hand_peaks(a, c.shape[0], c.shape[1]) for a, c in zip(avg, crops)]


def face_keypoints(net, crops: list[np.ndarray], device) -> list[np.ndarray]:
    """BGR face crops -> (n, 2) crop pixels of the landmarks found."""
    if not crops:
        return []
    (maps,) = _forward(net, np.stack([dec.resize_map(c, FACE_SIZE, FACE_SIZE) for c in crops]), device)
    out = []
    for m, c in zip(maps, crops):
        up = F.interpolate(torch.from_numpy(m)[None].to(device), c.shape[:2], mode="bilinear", align_corners=True)
        out.append(dec.face_peaks(up[0].cpu().numpy()))
    return out


def _in_image(peaks: np.ndarray, x: int, y: int, height: int, width: int) -> list:
    """Crop pixels -> fractions of the image; not-found points become -1 pixel (the
    reference's marker, which the drawing skips)."""
    peaks = peaks.astype(np.float32)
    if peaks.ndim != 2 or peaks.shape[1] != 2:
        return None
    px = np.where(peaks[:, 0] < 1e-6, -1, peaks[:, 0] + x) / float(width)
    py = np.where(peaks[:, 1] < 1e-6, -1, peaks[:, 1] + y) / float(height)
    return list(zip(px, py))


def detect_people(nets: OpenPoseNets, images_rgb: np.ndarray, hands: bool = False,
                  face: bool = False) -> list[list[Person]]:
    """(B, H, W, 3) RGB uint8 -> the people of each image (coordinates as fractions)."""
    bgr = np.ascontiguousarray(images_rgb[..., ::-1])
    h, w = bgr.shape[1:3]
    bodies = [dec.decode_body(heat, paf) for heat, paf in body_maps(nets.body, bgr, nets.device)]
    people = [[Person([None if p is None else (p[0] / float(w), p[1] / float(h)) for p in body]) for body in found]
              for found in bodies]
    if hands and nets.hand is not None:
        jobs = [(i, j, box) for i, found in enumerate(bodies) for j, body in enumerate(found)
                for box in dec.hand_boxes(body, h, w)]
        crops = [bgr[i][y:y + s, x:x + s] for i, _, (x, y, s, _) in jobs]
        for (i, j, (x, y, _, left)), peaks in zip(jobs, hand_keypoints(nets.hand, crops, nets.device)):
            setattr(people[i][j], "left_hand" if left else "right_hand", _in_image(peaks, x, y, h, w))
    if face and nets.face is not None:
        jobs = [(i, j, box) for i, found in enumerate(bodies) for j, body in enumerate(found)
                if (box := dec.face_box(body, h, w)) is not None]
        crops = [bgr[i][y:y + s, x:x + s] for i, _, (x, y, s) in jobs]
        for (i, j, (x, y, _)), peaks in zip(jobs, face_keypoints(nets.face, crops, nets.device)):
            people[i][j].face = _in_image(peaks, x, y, h, w)
    return people


def load_openpose(body_path: str, hand_path: Optional[str] = None, face_path: Optional[str] = None) -> list:
    """Patchers for the body network and, when given, the hand and face networks."""
    from ..weights import OPENPOSE_BODY, OPENPOSE_FACE, OPENPOSE_HAND
    from .loading import load
    from .openpose_nets import build_body, build_cpm

    return [load(body_path, lambda p: build_body(p, OPENPOSE_BODY)),
            hand_path and load(hand_path, lambda p: build_cpm(p, OPENPOSE_HAND)),
            face_path and load(face_path, lambda p: build_cpm(p, OPENPOSE_FACE))]


def openpose(patchers: list, images: torch.Tensor, detect_resolution: int = 512, body: bool = True,
             hands: bool = False, face: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """(B, C, H, W) 0..1 -> OpenPose guides (B, 3, H, W) and OpenPose JSON per image."""
    from .guides import pose_guides
    from .loading import on_device, progress

    used = [p for p in patchers if p is not None]
    modules, device = on_device(used)
    by_patcher = dict(zip(map(id, used), modules))
    body_net, hand_net, face_net = (by_patcher.get(id(p)) if p is not None else None for p in patchers)
    nets = OpenPoseNets(body_net, hand_net if hands else None, face_net if face else None, device)
    return pose_guides(lambda small: detect_people(nets, small, hands, face), images, detect_resolution,
                       body, hands, face, before_chunk=progress(images.shape[0]))
