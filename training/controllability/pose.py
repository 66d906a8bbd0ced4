"""Pose controllability: the keypoints of the guide (the OpenPose JSON the pose node emitted
with it) against those the same detector finds in the generated picture. People are matched
one-to-one (Hungarian), then PCK over the guide's visible body keypoints; see
docs/controllability.md."""
import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from ...preprocessors.image_ops import to_rgb
from . import metrics
from .measure import Measurement, _fit

POSE_MAPS = ("openpose", "dwpose")
BODY = 18  # OpenPose body keypoints: the ones scored
DEFAULT_RESOLUTION = 512  # the pose nodes' default detect_resolution


def detect_poses(kind: str, pictures: torch.Tensor, weight_paths: list[str], detect_resolution: int = 0,
                 hands: bool = False, face: bool = False) -> tuple[torch.Tensor, list[dict]]:
    """The pose node's detector on (B, C, H, W) 0..1 pictures -> its drawings and OpenPose JSON.
    openpose: [body network] (body only); dwpose: [person detector, pose estimator]."""
    from ...preprocessors.pose.dwpose import dwpose, load_dwpose
    from ...preprocessors.pose.openpose import load_openpose, openpose

    res = detect_resolution or DEFAULT_RESOLUTION
    if kind == "openpose":
        return openpose(load_openpose(weight_paths[0]), pictures.float(), res, True, False, False)
    if kind == "dwpose":
        return dwpose(load_dwpose(*weight_paths), pictures.float(), res, True, hands, face)
    raise ValueError(f"unknown pose map {kind!r}; known: {', '.join(POSE_MAPS)}")


def guide_parts(poses: list[dict]) -> tuple[bool, bool]:
    """Whether the guides show hands and faces (then the result is drawn with them too)."""
    people = [p for pose in poses for p in pose.get("people") or []]
    hands = any(p.get("hand_left_keypoints_2d") or p.get("hand_right_keypoints_2d") for p in people)
    return hands, any(p.get("face_keypoints_2d") for p in people)


def body_keypoints(pose: dict, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """One image's OpenPose JSON -> body keypoints (people, 18, 2) in pixels of a height x width
    canvas and visibility (people, 18). Coordinates are read as fractions of the JSON's canvas
    (OpenPose's layout) unless a visible one exceeds 1 (pixels: DWPose's layout)."""
    rows = [np.asarray(p.get("pose_keypoints_2d") or [0.0] * BODY * 3, dtype=np.float64).reshape(-1, 3)[:BODY]
            for p in pose.get("people") or []]
    if not rows:
        return np.zeros((0, BODY, 2)), np.zeros((0, BODY), dtype=bool)
    kp = np.stack(rows)
    visible = kp[..., 2] > 0
    xy = kp[..., :2].copy()
    if visible.any() and xy[visible].max() > 1.0:
        xy /= np.array([pose.get("canvas_width") or width, pose.get("canvas_height") or height], dtype=np.float64)
    keep = visible.any(1)  # a person without a visible body keypoint is nobody
    return xy[keep] * np.array([width, height]), visible[keep]


def person_sizes(keypoints: np.ndarray, visible: np.ndarray, canvas: int) -> np.ndarray:
    """The longer side of each person's box around its visible keypoints (pixels); a box of
    one point uses the canvas's longer side."""
    sizes = []
    for kp, vis in zip(keypoints, visible):
        span = kp[vis].max(0) - kp[vis].min(0)
        sizes.append(float(span.max()) if span.max() >= 1.0 else float(canvas))
    return np.array(sizes)


def match_people(guide: np.ndarray, guide_visible: np.ndarray, result: np.ndarray, result_visible: np.ndarray,
                 sizes: np.ndarray) -> list[tuple[int, int]]:
    """One-to-one (guide person, result person) pairs minimising the summed cost: the mean over
    the guide person's visible keypoints of min(distance / person size, 1), a keypoint the
    result person lacks costing 1."""
    if len(guide) == 0 or len(result) == 0:
        return []
    dist = np.linalg.norm(guide[:, None] - result[None], axis=-1) / sizes[:, None, None]  # (G, R, K)
    both = guide_visible[:, None] & result_visible[None]
    cost = np.where(both, np.minimum(dist, 1.0), 1.0)
    cost = (cost * guide_visible[:, None]).sum(-1) / guide_visible.sum(-1)[:, None]
    return list(zip(*linear_sum_assignment(cost)))


def pose_scores(guide_pose: dict, result_pose: dict, height: int, width: int, alpha: float = 0.1) -> dict[str, float]:
    """PCK@alpha of one image, pooled over every visible guide body keypoint: a keypoint is
    correct when its matched result person shows it within alpha x the guide person's box
    size; unmatched guide people miss all theirs. No guide person: 1 when the result shows
    nobody either, else 0. Coordinates compared in pixels of the guide's canvas."""
    g, gv = body_keypoints(guide_pose, height, width)
    r, rv = body_keypoints(result_pose, height, width)
    counts = {"people_guide": float(len(g)), "people_found": float(len(r))}
    if len(g) == 0:
        return {"pck": 1.0 if len(r) == 0 else 0.0, **counts}
    sizes = person_sizes(g, gv, max(height, width))
    paired = np.zeros_like(g)
    paired_visible = np.zeros_like(gv)
    for gi, ri in match_people(g, gv, r, rv, sizes):
        paired[gi], paired_visible[gi] = r[ri], rv[ri]
    score = metrics.pck(torch.from_numpy(paired).reshape(1, -1, 2), torch.from_numpy(g).reshape(1, -1, 2),
                        torch.from_numpy(paired_visible).reshape(1, -1), torch.from_numpy(gv).reshape(1, -1),
                        torch.from_numpy(np.repeat(sizes, BODY)).reshape(1, -1), alpha)
    return {"pck": float(score[0]), **counts}


def measure_pose(guide_maps: torch.Tensor, result_maps: torch.Tensor, guide_poses: list[dict],
                 result_poses: list[dict], alpha: float = 0.1) -> Measurement:
    """Per image PCK (see pose_scores), its mean, and guide drawing | drawing of the detected
    pose | difference. One guide (drawing and JSON) serves every result, or one per result."""
    n = result_maps.shape[0]
    if guide_maps.shape[0] not in (1, n):
        raise ValueError(f"{n} generated images but {guide_maps.shape[0]} guide images: give one guide or one per image")
    if len(guide_poses) not in (1, n):
        raise ValueError(f"{n} generated images but {len(guide_poses)} guide keypoint sets: connect the POSE_KEYPOINT "
                         "output of the pose node that made the guides (one for all, or one per image)")
    guide_maps = guide_maps.float().expand(n, *guide_maps.shape[1:])
    result_maps = _fit(result_maps, *guide_maps.shape[-2:])
    height, width = guide_maps.shape[-2:]
    per_image = []
    for i in range(n):
        gp = guide_poses[i if len(guide_poses) > 1 else 0]
        per_image.append(pose_scores(gp, result_poses[i], gp.get("canvas_height") or height,
                                     gp.get("canvas_width") or width, alpha))
    mean = {k: float(np.mean([d[k] for d in per_image])) for k in per_image[0]}
    guide_rgb, result_rgb = to_rgb(guide_maps), to_rgb(result_maps)
    picture = torch.cat([guide_rgb, result_rgb, (result_rgb - guide_rgb).abs()], dim=-1)
    return Measurement("pose", "pck", True, per_image, mean, picture)
