"""OpenPose's post-processing, step for step as lllyasviel's annotator does it (so the same
maps give the same people): heatmap peaks, limb scores along the part affinity fields,
greedy grouping into people; hand and face boxes from the body; hand and face peaks.
Pixel coordinates of the detection image throughout."""
import math

import cv2
import numpy as np
from scipy.ndimage import gaussian_filter

# 1-based part pairs and the PAF channels (minus 19) that score them, as in the reference;
# the last two pairs (ear-shoulder) only join existing people.
PAIRS = [(2, 3), (2, 6), (3, 4), (4, 5), (6, 7), (7, 8), (2, 9), (9, 10), (10, 11), (2, 12), (12, 13), (13, 14),
         (2, 1), (1, 15), (15, 17), (1, 16), (16, 18), (3, 17), (6, 18)]
PAF_CHANNELS = [(31, 32), (39, 40), (33, 34), (35, 36), (41, 42), (43, 44), (19, 20), (21, 22), (23, 24), (25, 26),
                (27, 28), (29, 30), (47, 48), (49, 50), (53, 54), (51, 52), (55, 56), (37, 38), (45, 46)]
PEAK_THRESHOLD = 0.1
PAF_THRESHOLD = 0.05
SAMPLES = 10
SIGMA = 3


def resize_map(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """The reference's smart_resize: area when shrinking, Lanczos when enlarging, per channel."""
    k = float(height + width) / float(x.shape[0] + x.shape[1])
    mode = cv2.INTER_AREA if k < 1 else cv2.INTER_LANCZOS4
    if x.ndim == 2 or x.shape[2] in (1, 3):
        return cv2.resize(x, (int(width), int(height)), interpolation=mode)
    return np.stack([cv2.resize(x[:, :, i], (int(width), int(height)), interpolation=mode)
                     for i in range(x.shape[2])], axis=2)


def pad_right_down(img: np.ndarray, stride: int = 8, value: int = 128) -> tuple[np.ndarray, tuple[int, int]]:
    h, w = img.shape[:2]
    down, right = -h % stride, -w % stride
    return np.pad(img, ((0, down), (0, right), (0, 0)), constant_values=value), (down, right)


def network_map_to_image(out: np.ndarray, padded: tuple[int, int], pad: tuple[int, int],
                         size: tuple[int, int]) -> np.ndarray:
    """(C, h/8, w/8) network output -> (H, W, C): x8 up, padding cut, resized to `size`."""
    m = np.transpose(out, (1, 2, 0))
    m = resize_map(m, m.shape[0] * 8, m.shape[1] * 8)
    m = m[:padded[0] - pad[0], :padded[1] - pad[1], :]
    return resize_map(m, *size)


def _peaks(heatmap: np.ndarray) -> list[list[tuple]]:
    """Per body part: (x, y, score, id) at local maxima of the smoothed map above 0.1."""
    all_peaks, counter = [], 0
    for part in range(18):
        raw = heatmap[:, :, part]
        s = gaussian_filter(raw, sigma=SIGMA)
        up, down, left, right = (np.zeros_like(s) for _ in range(4))
        up[1:, :], down[:-1, :], left[:, 1:], right[:, :-1] = s[:-1, :], s[1:, :], s[:, :-1], s[:, 1:]
        ys, xs = np.nonzero((s >= up) & (s >= down) & (s >= left) & (s >= right) & (s > PEAK_THRESHOLD))
        all_peaks.append([(x, y, raw[y, x], counter + i) for i, (x, y) in enumerate(zip(xs, ys))])
        counter += len(xs)
    return all_peaks


def _connections(all_peaks, paf: np.ndarray, image_height: int):
    """Per limb: accepted (idA, idB, score, i, j) rows, or [] when a part has no peaks."""
    connection_all, missing = [], []
    for k, ((a, b), channels) in enumerate(zip(PAIRS, PAF_CHANNELS)):
        score_mid = paf[:, :, [c - 19 for c in channels]]
        cand_a, cand_b = all_peaks[a - 1], all_peaks[b - 1]
        if not cand_a or not cand_b:
            missing.append(k)
            connection_all.append([])
            continue
        candidates = []
        for i, pa in enumerate(cand_a):
            for j, pb in enumerate(cand_b):
                vec = np.subtract(pb[:2], pa[:2])
                norm = max(0.001, math.sqrt(vec[0] * vec[0] + vec[1] * vec[1]))
                vec = np.divide(vec, norm)
                xs = np.round(np.linspace(pa[0], pb[0], num=SAMPLES)).astype(int)
                ys = np.round(np.linspace(pa[1], pb[1], num=SAMPLES)).astype(int)
                along = score_mid[ys, xs, 0] * vec[0] + score_mid[ys, xs, 1] * vec[1]
                prior = sum(along) / len(along) + min(0.5 * image_height / norm - 1, 0)
                if len(np.nonzero(along > PAF_THRESHOLD)[0]) > 0.8 * len(along) and prior > 0:
                    candidates.append([i, j, prior, prior + pa[2] + pb[2]])
        candidates = sorted(candidates, key=lambda c: c[2], reverse=True)
        connection = np.zeros((0, 5))
        for i, j, s, _ in candidates:
            if i not in connection[:, 3] and j not in connection[:, 4]:
                connection = np.vstack([connection, [cand_a[i][3], cand_b[j][3], s, i, j]])
                if len(connection) >= min(len(cand_a), len(cand_b)):
                    break
        connection_all.append(connection)
    return connection_all, missing


def _group(all_peaks, connection_all, missing) -> tuple[np.ndarray, np.ndarray]:
    """People as rows of 18 candidate ids (-1 = absent), total score, part count."""
    subset = -1 * np.ones((0, 20))
    candidate = np.array([p for peaks in all_peaks for p in peaks])
    for k in range(len(PAIRS)):
        if k in missing:
            continue
        parts_a, parts_b = connection_all[k][:, 0], connection_all[k][:, 1]
        index_a, index_b = np.array(PAIRS[k]) - 1
        for i in range(len(connection_all[k])):
            found, idx = 0, [-1, -1]
            for j in range(len(subset)):
                if subset[j][index_a] == parts_a[i] or subset[j][index_b] == parts_b[i]:
                    idx[found] = j
                    found += 1
            if found == 1:
                j = idx[0]
                if subset[j][index_b] != parts_b[i]:
                    subset[j][index_b] = parts_b[i]
                    subset[j][-1] += 1
                    subset[j][-2] += candidate[parts_b[i].astype(int), 2] + connection_all[k][i][2]
            elif found == 2:
                j1, j2 = idx
                membership = ((subset[j1] >= 0).astype(int) + (subset[j2] >= 0).astype(int))[:-2]
                if len(np.nonzero(membership == 2)[0]) == 0:  # disjoint: merge the two
                    subset[j1][:-2] += subset[j2][:-2] + 1
                    subset[j1][-2:] += subset[j2][-2:]
                    subset[j1][-2] += connection_all[k][i][2]
                    subset = np.delete(subset, j2, 0)
                else:
                    subset[j1][index_b] = parts_b[i]
                    subset[j1][-1] += 1
                    subset[j1][-2] += candidate[parts_b[i].astype(int), 2] + connection_all[k][i][2]
            elif not found and k < 17:
                row = -1 * np.ones(20)
                row[index_a], row[index_b] = parts_a[i], parts_b[i]
                row[-1] = 2
                row[-2] = sum(candidate[connection_all[k][i, :2].astype(int), 2]) + connection_all[k][i][2]
                subset = np.vstack([subset, row])
    keep = [i for i in range(len(subset)) if not (subset[i][-1] < 4 or subset[i][-2] / subset[i][-1] < 0.4)]
    return candidate, subset[keep]


def decode_body(heatmap: np.ndarray, paf: np.ndarray) -> list[list]:
    """(H, W, 19) heatmaps and (H, W, 38) PAFs -> people, each 18 (x, y) pixel points or None."""
    all_peaks = _peaks(heatmap)
    connections, missing = _connections(all_peaks, paf, heatmap.shape[0])
    candidate, subset = _group(all_peaks, connections, missing)
    return [[(candidate[i][0], candidate[i][1]) if i != -1 else None for i in person[:18].astype(int)]
            for person in subset]


def hand_boxes(body: list, height: int, width: int) -> list[tuple[int, int, int, bool]]:
    """(x, y, side, is_left) squares around the hands, from wrist, elbow and shoulder
    (OpenPose's handDetector: 1.5 x the forearm or 0.9 x upper arm, 20 px at least)."""
    boxes = []
    for (shoulder, elbow, wrist), is_left in (((5, 6, 7), True), ((2, 3, 4), False)):
        if any(body[i] is None for i in (shoulder, elbow, wrist)):
            continue
        (x1, y1), (x2, y2), (x3, y3) = body[shoulder], body[elbow], body[wrist]
        x, y = x3 + 0.33 * (x3 - x2), y3 + 0.33 * (y3 - y2)
        side = 1.5 * max(math.sqrt((x3 - x2) ** 2 + (y3 - y2) ** 2), 0.9 * math.sqrt((x2 - x1) ** 2 + (y2 - y1) ** 2))
        x, y = max(x - side / 2, 0), max(y - side / 2, 0)
        side = min(width - x if x + side > width else side, height - y if y + side > height else side)
        if side >= 20:
            boxes.append((int(x), int(y), int(side), is_left))
    return boxes


def face_box(body: list, height: int, width: int) -> tuple[int, int, int] | None:
    """(x, y, side) square around the head from nose, eyes and ears (lllyasviel's rule)."""
    head = body[0]
    if head is None or all(body[i] is None for i in (14, 15, 16, 17)):
        return None
    half = 0.0
    for i, factor in ((14, 3.0), (15, 3.0), (16, 1.5), (17, 1.5)):
        if body[i] is not None:
            half = max(half, factor * max(abs(head[0] - body[i][0]), abs(head[1] - body[i][1])))
    x, y = max(head[0] - half, 0), max(head[1] - half, 0)
    # as in the reference, the overflow test uses the half side: kept for identical boxes
    side = min(width - x if x + half > width else half * 2, height - y if y + half > height else half * 2)
    return (int(x), int(y), int(side)) if side >= 20 else None


def hand_peaks(heatmap: np.ndarray, crop_height: int, crop_width: int, threshold: float = 0.05) -> np.ndarray:
    """(128, 128, 22) averaged hand maps -> (21, 2) crop pixels; (0, 0) where nothing is found.
    Each part keeps its strongest connected blob and takes that blob's maximum."""
    size = heatmap.shape[0]
    peaks = []
    for part in range(21):
        raw = heatmap[:, :, part].copy()
        binary = np.ascontiguousarray(gaussian_filter(raw, sigma=SIGMA) > threshold, dtype=np.uint8)
        if binary.sum() == 0:
            peaks.append([0, 0])
            continue
        count, labels = cv2.connectedComponents(binary, connectivity=8)
        best = 1 + int(np.argmax([raw[labels == i].sum() for i in range(1, count)]))
        raw[labels != best] = 0
        y, x = np.unravel_index(int(np.argmax(raw)), raw.shape)
        peaks.append([int(float(x) * float(crop_width) / float(size)), int(float(y) * float(crop_height) / float(size))])
    return np.array(peaks)


def face_peaks(heatmaps: np.ndarray, threshold: float = 0.05) -> np.ndarray:
    """(71, h, w) face maps at crop size -> (n, 2) crop pixels of each map's maximum above
    the threshold; maps with nothing above it are skipped, as in the reference."""
    peaks = []
    for m in heatmaps:
        if (m > threshold).any():
            y, x = np.unravel_index(int(np.argmax(np.where(m > threshold, m, -np.inf))), m.shape)
            peaks.append([x, y])
    return np.array(peaks)
