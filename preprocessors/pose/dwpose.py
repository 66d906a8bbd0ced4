"""DWPose whole-body keypoints (133 per person: body, feet, face, hands), as the DWPose
release for ControlNet and comfyui_controlnet_aux compute them: YOLOX finds people (640 x
640 letterbox, class "person" above 0.3 after NMS at 0.45), RTMPose-l places the
keypoints in each box (SimCC x/y classification), and the COCO-wholebody layout is
turned into OpenPose's 18 body points (neck = mean of the shoulders) with points scoring
under 0.3 dropped. Images are RGB uint8, as the DWPose annotator feeds them."""
from typing import Callable

import cv2
import numpy as np
import torch

from .keypoints import Person

DET_SIZE = (640, 640)
DET_STRIDES = (8, 16, 32)
NMS_IOU, DET_SCORE, PERSON_SCORE = 0.45, 0.1, 0.3
BOX_PADDING = 1.25
MEAN = np.array([123.675, 116.28, 103.53])
STD = np.array([58.395, 57.12, 57.375])
SIMCC_SPLIT = 2.0
VISIBLE = 0.3
# COCO-wholebody body order -> OpenPose order (after the neck is inserted at 17)
MMPOSE_IDX = [17, 6, 8, 10, 7, 9, 12, 14, 16, 13, 15, 2, 1, 4, 3]
OPENPOSE_IDX = [1, 2, 3, 4, 6, 7, 8, 9, 10, 12, 13, 14, 15, 16, 17]

Runner = Callable[[torch.Tensor], tuple]


def _letterbox(img: np.ndarray) -> tuple[np.ndarray, float]:
    out = np.full((*DET_SIZE, 3), 114, dtype=np.uint8)
    r = min(DET_SIZE[0] / img.shape[0], DET_SIZE[1] / img.shape[1])
    h, w = int(img.shape[0] * r), int(img.shape[1] * r)
    out[:h, :w] = cv2.resize(img, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.uint8)
    return np.ascontiguousarray(out.transpose(2, 0, 1), dtype=np.float32), r


def _nms(boxes: np.ndarray, scores: np.ndarray) -> list[int]:
    x1, y1, x2, y2 = boxes.T
    areas = (x2 - x1 + 1) * (y2 - y1 + 1)
    order, keep = scores.argsort()[::-1], []
    while order.size > 0:
        i = order[0]
        keep.append(i)
        w = np.maximum(0.0, np.minimum(x2[i], x2[order[1:]]) - np.maximum(x1[i], x1[order[1:]]) + 1)
        h = np.maximum(0.0, np.minimum(y2[i], y2[order[1:]]) - np.maximum(y1[i], y1[order[1:]]) + 1)
        inter = w * h
        order = order[np.where(inter / (areas[i] + areas[order[1:]] - inter) <= NMS_IOU)[0] + 1]
    return keep


def decode_detections(raw: np.ndarray, ratio: float) -> np.ndarray:
    """YOLOX output (N, 5 + classes) at 640 x 640 -> person boxes (n, 4) xyxy in image pixels.
    Class-aware NMS as in the reference; only people above 0.3 are kept."""
    grids, strides = [], []
    for s in DET_STRIDES:
        xv, yv = np.meshgrid(np.arange(DET_SIZE[1] // s), np.arange(DET_SIZE[0] // s))
        grids.append(np.stack((xv, yv), 2).reshape(-1, 2))
        strides.append(np.full((grids[-1].shape[0], 1), s))
    grid, stride = np.concatenate(grids), np.concatenate(strides)
    out = raw.copy()
    out[:, :2] = (out[:, :2] + grid) * stride
    out[:, 2:4] = np.exp(out[:, 2:4]) * stride
    boxes = np.ones_like(out[:, :4])
    boxes[:, 0], boxes[:, 1] = out[:, 0] - out[:, 2] / 2.0, out[:, 1] - out[:, 3] / 2.0
    boxes[:, 2], boxes[:, 3] = out[:, 0] + out[:, 2] / 2.0, out[:, 1] + out[:, 3] / 2.0
    boxes /= ratio
    score = out[:, 4] * out[:, 5]  # objectness x "person"; NMS is per class, so the others do not matter
    valid = score > DET_SCORE
    if not valid.any():
        return np.zeros((0, 4))
    boxes, score = boxes[valid], score[valid]
    keep = [i for i in _nms(boxes, score) if score[i] > PERSON_SCORE]
    return boxes[keep].reshape(-1, 4)


def detect_boxes(run: Runner, image: np.ndarray, device) -> np.ndarray:
    x, ratio = _letterbox(image)
    (raw,) = run(torch.from_numpy(x)[None].to(device))[:1]
    return decode_detections(raw[0].float().cpu().numpy(), ratio)


def _third_point(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    d = a - b
    return b + np.r_[-d[1], d[0]]


def box_to_crop(box: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """xyxy box -> (centre, scale of the crop at the network's aspect, 2x3 warp matrix)."""
    w, h = size
    center = np.array([box[0] + box[2], box[1] + box[3]]) * 0.5
    scale = np.array([box[2] - box[0], box[3] - box[1]]) * BOX_PADDING
    scale = np.array([scale[0], scale[0] / (w / h)]) if scale[0] > scale[1] * (w / h) else \
        np.array([scale[1] * (w / h), scale[1]])
    src = np.zeros((3, 2), dtype=np.float32)
    dst = np.zeros((3, 2), dtype=np.float32)
    src[0], src[1] = center, center + np.array([0.0, scale[0] * -0.5])
    src[2] = _third_point(src[0], src[1])
    dst[0], dst[1] = [w * 0.5, h * 0.5], np.array([w * 0.5, h * 0.5]) + np.array([0.0, w * -0.5])
    dst[2] = _third_point(dst[0], dst[1])
    return center, scale, cv2.getAffineTransform(np.float32(src), np.float32(dst))


def estimate_keypoints(run: Runner, images: np.ndarray, boxes: list[np.ndarray], size: tuple[int, int],
                       device) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per image, per box: (n, 133, 2) keypoints in image pixels and (n, 133) scores, from
    SimCC maxima. The crops of all the images go through the estimator together
    (run_batched: several per run where the graph allows)."""
    from .onnx_torch import run_batched

    crops = [(image, box_to_crop(box, size)) for image, image_boxes in zip(images, boxes) for box in image_boxes]
    if not crops:
        return [(np.zeros((0, 133, 2)), np.zeros((0, 133))) for _ in boxes]
    x = np.stack([((cv2.warpAffine(image, warp, (int(size[0]), int(size[1])), flags=cv2.INTER_LINEAR) - MEAN) / STD)
                  .transpose(2, 0, 1) for image, (_, _, warp) in crops]).astype(np.float32)
    simcc_x, simcc_y = (o.float().cpu().numpy() for o in run_batched(run, torch.from_numpy(x).to(device))[:2])
    locs = np.stack((simcc_x.argmax(2), simcc_y.argmax(2)), axis=-1).astype(np.float32)
    vals = np.minimum(simcc_x.max(2), simcc_y.max(2))
    locs[vals <= 0.0] = -1
    centers, scales = (np.array([crop[1][k] for crop in crops])[:, None] for k in (0, 1))
    keypoints = locs / SIMCC_SPLIT / np.array(size) * scales + centers - scales / 2
    ends = np.cumsum([len(b) for b in boxes])
    return [(keypoints[e - len(b):e], vals[e - len(b):e]) for e, b in zip(ends, boxes)]


def to_openpose_order(keypoints: np.ndarray, scores: np.ndarray) -> np.ndarray:
    """(n, 133, 2), (n, 133) -> (n, 134, 3): neck inserted, body points in OpenPose order."""
    info = np.concatenate((keypoints, scores[..., None]), axis=-1)
    neck = np.mean(info[:, [5, 6]], axis=1)
    neck[:, 2:4] = np.logical_and(info[:, 5, 2:4] > VISIBLE, info[:, 6, 2:4] > VISIBLE).astype(int)
    info = np.insert(info, 17, neck, axis=1)
    info[:, OPENPOSE_IDX] = info[:, MMPOSE_IDX]
    return info


def to_people(info: np.ndarray, height: int, width: int) -> list[Person]:
    """OpenPose-ordered keypoints -> people with points scoring under 0.3 dropped; the face
    gets the two eyes appended (70 points, OpenPose's face layout), as comfyui_controlnet_aux does."""
    def part(rows):
        pts = [(x / float(width), y / float(height)) if s >= VISIBLE else None for x, y, s in rows]
        return None if all(p is None for p in pts) else pts

    people = []
    for person in info:
        body = part(person[:18]) or [None] * 18
        face = part(person[24:92])
        if face is not None:
            face += [body[14], body[15]]
        people.append(Person(body, left_hand=part(person[92:113]), right_hand=part(person[113:134]), face=face,
                             feet=part(person[18:24])))
    return people


def detect_people(detector: Runner, estimator: Runner, pose_size: tuple[int, int], images_rgb: np.ndarray,
                  device) -> list[list[Person]]:
    """(B, H, W, 3) RGB uint8 -> the people of each image (coordinates as fractions)."""
    boxes = [detect_boxes(detector, image, device) for image in images_rgb]
    found = estimate_keypoints(estimator, images_rgb, boxes, pose_size, device)
    return [to_people(to_openpose_order(keypoints, scores), *image.shape[:2]) if len(keypoints) else []
            for image, (keypoints, scores) in zip(images_rgb, found)]


BACKENDS = ("torch", "onnxruntime")
_ort_cache: dict[str, tuple] = {}


def _load_ort(path: str):
    from ..weights import file_version
    from .onnx_torch import OrtModel

    version = file_version(path)
    hit = _ort_cache.get(path)
    if hit is None or hit[0] != version:
        hit = _ort_cache[path] = (version, OrtModel(path))
    return hit[1]


def load_dwpose(detector_path: str, estimator_path: str, backend: str = "torch") -> tuple:
    """Patchers (torch) or onnxruntime sessions for the detector and the pose estimator."""
    from ..weights import DWPOSE_DETECTOR, DWPOSE_ESTIMATOR
    from .loading import load
    from .onnx_torch import OnnxModel, onnxruntime_available

    if backend == "onnxruntime":
        if not onnxruntime_available():
            from ..weights import WrongWeightLayout

            raise WrongWeightLayout("backend 'onnxruntime' needs the onnxruntime package (pip install onnxruntime, "
                                    "or onnxruntime-gpu); the 'torch' backend runs the same files without it")
        return _load_ort(detector_path), _load_ort(estimator_path)
    return (load(detector_path, lambda p: OnnxModel(p, DWPOSE_DETECTOR.architecture)),
            load(estimator_path, lambda p: OnnxModel(p, DWPOSE_ESTIMATOR.architecture)))


def dwpose(models: tuple, images: torch.Tensor, detect_resolution: int = 512, body: bool = True,
           hands: bool = True, face: bool = True) -> tuple[torch.Tensor, list[dict]]:
    """(B, C, H, W) 0..1 -> DWPose guides (B, 3, H, W) and OpenPose JSON per image (pixel
    coordinates of the input, as comfyui_controlnet_aux's DWPose writes them)."""
    from .guides import pose_guides
    from .loading import on_device, progress
    from .onnx_torch import OrtModel

    if isinstance(models[0], OrtModel):
        (detector, estimator), device = models, torch.device("cpu")
    else:
        (detector, estimator), device = on_device(list(models))
    size = (estimator.input_shape[3], estimator.input_shape[2])
    with torch.no_grad():
        return pose_guides(lambda small: detect_people(detector, estimator, size, small, device), images,
                           detect_resolution, body, hands, face, pixels=True, before_chunk=progress(images.shape[0]))
