"""Normal map from a depth guide (no weights): the slope of the depth surface at each
pixel. Colours follow the usual rendering convention: red = facing right, green = facing
up, blue = facing the viewer, so a flat picture plane is (0.5, 0.5, 1.0)."""
import torch
import torch.nn.functional as F

from .image_ops import to_gray

_SOBEL_X = torch.tensor([[-1.0, 0.0, 1.0], [-2.0, 0.0, 2.0], [-1.0, 0.0, 1.0]]) / 8.0


@torch.no_grad()
def normals_from_depth(depth: torch.Tensor, strength: float = 1.0, background_threshold: float = 0.0) -> torch.Tensor:
    """Depth guide (B, C, H, W), near = bright, 0..1 -> (B, 3, H, W) normal map 0..1.

    Slopes are measured in depth range per image width (a ramp from black to white across
    the picture has slope 1), so `strength` means the same at every resolution. Pixels
    darker (farther) than background_threshold are treated as flat background."""
    d = to_gray(depth.float())
    kx = _SOBEL_X.to(d).view(1, 1, 3, 3)
    padded = F.pad(d, (1, 1, 1, 1), mode="replicate")
    width = d.shape[-1]
    gx = F.conv2d(padded, kx) * width           # d(depth)/dx, x to the right
    gy = F.conv2d(padded, kx.transpose(-1, -2)) * width  # d(depth)/d(row), rows going down
    flat = d < background_threshold
    gx, gy = gx.masked_fill(flat, 0.0), gy.masked_fill(flat, 0.0)
    # The surface z = depth(x, y_up) has normal (-dz/dx, -dz/dy_up, 1); y_up = -row.
    n = torch.cat([-strength * gx, strength * gy, torch.ones_like(gx)], dim=1)
    return n / n.norm(dim=1, keepdim=True) * 0.5 + 0.5
