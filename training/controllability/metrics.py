"""Controllability metrics on maps (B, C, H, W) in 0..1; each returns one value per image.
The exact definitions, with their sources, are in docs/controllability.md."""
import math

import torch
import torch.nn.functional as F

from ...preprocessors.image_ops import to_gray


def _disc(radius: float, device) -> torch.Tensor:
    r = int(math.floor(radius))
    yy, xx = torch.meshgrid(torch.arange(-r, r + 1), torch.arange(-r, r + 1), indexing="ij")
    return ((yy * yy + xx * xx) <= radius * radius).float().to(device).view(1, 1, 2 * r + 1, 2 * r + 1)


def _within(edges: torch.Tensor, radius: float) -> torch.Tensor:
    """True where an edge pixel lies within Euclidean distance `radius` (pixel centres)."""
    if radius < 1:
        return edges
    k = _disc(radius, edges.device)
    return F.conv2d(edges.float(), k, padding=k.shape[-1] // 2) > 0


def binarize(m: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """(B, C, H, W) map -> (B, 1, H, W) bool: grey level above threshold."""
    return to_gray(m.float()) > threshold


def edge_f1(result: torch.Tensor, guide: torch.Tensor, tolerance: float = 2.0) -> dict[str, torch.Tensor]:
    """Edge precision, recall and F1 with a distance tolerance, per image, on binary maps
    (B, 1, H, W) bool. A result pixel is correct when a guide edge pixel lies within
    `tolerance` pixels (Euclidean), and a guide pixel is recalled when a result edge pixel
    does (no one-to-one matching, unlike BSDS; tolerance 0 is pixel-exact). An empty map
    scores precision (or recall) 1; two empty maps score F1 = 1."""
    r, g = result.bool(), guide.bool()
    n_r, n_g = r.flatten(1).sum(1).float(), g.flatten(1).sum(1).float()
    hit_r = (r & _within(g, tolerance)).flatten(1).sum(1).float()
    hit_g = (g & _within(r, tolerance)).flatten(1).sum(1).float()
    precision = torch.where(n_r > 0, hit_r / n_r.clamp(min=1), torch.ones_like(n_r))
    recall = torch.where(n_g > 0, hit_g / n_g.clamp(min=1), torch.ones_like(n_g))
    total = precision + recall
    f1 = torch.where(total > 0, 2 * precision * recall / total.clamp(min=1e-12), torch.zeros_like(total))
    f1 = torch.where((n_r == 0) & (n_g == 0), torch.ones_like(f1), torch.where((n_r == 0) | (n_g == 0), torch.zeros_like(f1), f1))
    return {"f1": f1, "precision": precision, "recall": recall}


def ssim(result: torch.Tensor, guide: torch.Tensor, window: int = 11, sigma: float = 1.5) -> torch.Tensor:
    """Mean SSIM (Wang et al. 2004) of the grey maps, Gaussian window 11 / sigma 1.5, data
    range 1, valid region only (no padding); per image."""
    x, y = to_gray(result.float()), to_gray(guide.float())
    ax = torch.arange(window, dtype=torch.float32, device=x.device) - (window - 1) / 2
    g1 = torch.exp(-(ax**2) / (2 * sigma**2))
    g1 = g1 / g1.sum()
    k = (g1[:, None] * g1[None, :]).view(1, 1, window, window)
    if min(x.shape[-2:]) < window:
        raise ValueError(f"SSIM needs maps of at least {window}x{window} pixels, got {tuple(x.shape[-2:])}")
    mx, my = F.conv2d(x, k), F.conv2d(y, k)
    vx = F.conv2d(x * x, k) - mx**2
    vy = F.conv2d(y * y, k) - my**2
    cxy = F.conv2d(x * y, k) - mx * my
    c1, c2 = 0.01**2, 0.03**2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    return s.flatten(1).mean(1)


def align_scale_shift(result: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """s * result + t with (s, t) the least-squares fit to the guide, per image (grey maps,
    (B, 1, H, W)). A constant result map gets s = 0, t = mean(guide)."""
    p, g = to_gray(result.float()).flatten(1), to_gray(guide.float()).flatten(1)
    pm, gm = p.mean(1, keepdim=True), g.mean(1, keepdim=True)
    var = ((p - pm) ** 2).mean(1, keepdim=True)
    cov = ((p - pm) * (g - gm)).mean(1, keepdim=True)
    s = torch.where(var > 1e-12, cov / var.clamp(min=1e-12), torch.zeros_like(var))
    return (s * (p - pm) + gm).view(result.shape[0], 1, *result.shape[-2:])


def depth_errors(result: torch.Tensor, guide: torch.Tensor) -> dict[str, torch.Tensor]:
    """RMSE after least-squares scale-and-shift alignment of the result's depth map to the
    guide's (in the guide's 0..1 units), and the Pearson correlation of the two maps
    (0 when either is constant)."""
    aligned = align_scale_shift(result, guide).flatten(1)
    p, g = to_gray(result.float()).flatten(1), to_gray(guide.float()).flatten(1)
    rmse = ((aligned - g) ** 2).mean(1).sqrt()
    pc, gc = p - p.mean(1, keepdim=True), g - g.mean(1, keepdim=True)
    denom = (pc.pow(2).sum(1) * gc.pow(2).sum(1)).sqrt()
    corr = torch.where(denom > 1e-12, (pc * gc).sum(1) / denom.clamp(min=1e-12), torch.zeros_like(denom))
    return {"rmse": rmse, "correlation": corr}


def normal_angles(result: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Per-pixel angle in degrees (B, 1, H, W) between the normals the two maps encode
    (rendering colours: n = 2 * rgb - 1, normalised)."""
    a = F.normalize(result[:, :3].float() * 2 - 1, dim=1, eps=1e-6)
    b = F.normalize(guide[:, :3].float() * 2 - 1, dim=1, eps=1e-6)
    return torch.rad2deg(torch.acos((a * b).sum(1, keepdim=True).clamp(-1.0, 1.0)))


def normal_errors(result: torch.Tensor, guide: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean angular error in degrees, and the share of pixels within 11.25 degrees."""
    ang = normal_angles(result, guide).flatten(1)
    return {"angle_deg": ang.mean(1), "within_11_25": (ang <= 11.25).float().mean(1)}


def pck(result: torch.Tensor, guide: torch.Tensor, result_visible: torch.Tensor, guide_visible: torch.Tensor,
        size, alpha: float = 0.1) -> torch.Tensor:
    """Percentage of correct keypoints per row: keypoints (B, K, 2) in pixels, visibility
    (B, K) bool. Of the guide's visible keypoints, the share the result also shows within
    alpha * size pixels; size (pixels): one number, one per row (B,) or one per keypoint
    (B, K), e.g. the longer side of the person's bounding box. No visible guide keypoint: 1."""
    size = torch.as_tensor(size, dtype=torch.float32)
    size = size[:, None] if size.dim() == 1 else size
    dist = (result.float() - guide.float()).norm(dim=-1)
    ok = guide_visible & result_visible & (dist <= alpha * size)
    n = guide_visible.sum(1).float()
    return torch.where(n > 0, ok.sum(1).float() / n.clamp(min=1), torch.ones_like(n))


def labels_from_colours(seg: torch.Tensor) -> torch.Tensor:
    """Colour-coded segmentation maps (B, 3, H, W) in 0..1 -> integer labels (B, H, W), one
    per 8-bit colour, so maps drawn with any palette compare."""
    q = (seg[:, :3].float() * 255).round().long()
    return q[:, 0] * 65536 + q[:, 1] * 256 + q[:, 2]


def mean_iou(result: torch.Tensor, guide: torch.Tensor) -> torch.Tensor:
    """Per image, the mean over the classes present in either label map (B, H, W) of
    |result == c and guide == c| / |result == c or guide == c|."""
    out = []
    for r, g in zip(result, guide):
        ious = [((r == c) & (g == c)).sum().float() / ((r == c) | (g == c)).sum().float()
                for c in torch.unique(torch.cat([r.flatten(), g.flatten()]))]
        out.append(torch.stack(ious).mean())
    return torch.stack(out)
