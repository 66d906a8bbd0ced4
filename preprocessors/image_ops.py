"""Small image helpers shared by the preprocessors. Images are (B, C, H, W) floats in 0..1."""
import numpy as np
import torch
import torch.nn.functional as F

# ITU-R BT.601 luma, the weights OpenCV's RGB2GRAY uses, so 0-255 thresholds mean the same.
LUMA = (0.299, 0.587, 0.114)


def to_rgb(x: torch.Tensor) -> torch.Tensor:
    """Accept grey (1), grey+alpha (2), RGB (3) or RGBA (4) channels; return RGB."""
    c = x.shape[1]
    if c == 1:
        return x.expand(-1, 3, -1, -1)
    if c == 2:
        return x[:, :1].expand(-1, 3, -1, -1)
    if c == 3:
        return x
    if c == 4:
        return x[:, :3]
    raise ValueError(f"expected an image with 1-4 channels, got {c}")


def to_gray(x: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H, W) luma."""
    rgb = to_rgb(x)
    w = torch.tensor(LUMA, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
    return (rgb * w).sum(1, keepdim=True)


def invert(x: torch.Tensor) -> torch.Tensor:
    """Negative of the colour channels (alpha dropped): black lines on white <-> white on black."""
    return 1.0 - to_rgb(x)


def shift(x: torch.Tensor, dy: int, dx: int, fill: float = 0.0) -> torch.Tensor:
    """out[y, x] = x[y + dy, x + dx] for |dy|, |dx| <= 1; `fill` outside the image."""
    h, w = x.shape[-2:]
    p = F.pad(x, (1, 1, 1, 1), value=fill)
    return p[..., 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w]


def gaussian_blur(x: torch.Tensor, sigma: float, truncate: float = 3.0) -> torch.Tensor:
    """Separable Gaussian blur with reflect padding (OpenCV's BORDER_REFLECT_101), kernel
    radius truncate * sigma; sigma <= 0 returns x. OpenCV's GaussianBlur(ksize=0) truncates
    at 3 sigma for 8-bit images and at 4 sigma for float ones. On CPU OpenCV runs it (its
    SIMD filters beat a torch convolution there); elsewhere torch does; both compute the
    same kernel, so the two agree to float error."""
    if sigma <= 0:
        return x
    radius = max(1, int(round(truncate * sigma)))
    if blur_with_opencv(x, radius):
        return _gaussian_blur_opencv(x, sigma, radius)
    return _gaussian_blur_torch(x, sigma, radius)


def use_opencv(x: torch.Tensor) -> bool:
    """The classical maps run through OpenCV for pictures on the CPU, through torch elsewhere."""
    return x.device.type == "cpu"


def blur_with_opencv(x: torch.Tensor, radius: int) -> bool:
    """OpenCV takes float32 CPU images whose sides exceed the radius (reflection needs
    that); anything else goes through torch."""
    return use_opencv(x) and x.dtype == torch.float32 and min(x.shape[-2:]) > radius


def _gaussian_blur_opencv(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    """Plane by plane, written straight into the output: no interleaved copies."""
    import cv2

    k = 2 * radius + 1
    src = x.contiguous().numpy()
    out = np.empty_like(src)
    for i in range(src.shape[0]):
        for c in range(src.shape[1]):
            cv2.GaussianBlur(src[i, c], (k, k), sigma, dst=out[i, c], sigmaY=sigma, borderType=cv2.BORDER_REFLECT_101)
    return torch.from_numpy(out)


def _gaussian_blur_torch(x: torch.Tensor, sigma: float, radius: int) -> torch.Tensor:
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t * t) / (2 * sigma * sigma))
    k = k / k.sum()
    c = x.shape[1]
    pad = min(radius, x.shape[-1] - 1, x.shape[-2] - 1)
    if pad < radius:  # tiny images: reflect padding cannot exceed the side, fall back to replicate
        xp = F.pad(x, (radius, radius, radius, radius), mode="replicate")
    else:
        xp = F.pad(x, (radius, radius, radius, radius), mode="reflect")
    xp = F.conv2d(xp, k.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)
    return F.conv2d(xp, k.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)


def resize(x: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Resize to (height, width): area when shrinking, bicubic (clamped) when enlarging."""
    if x.shape[-2:] == (height, width):
        return x
    if height <= x.shape[-2] and width <= x.shape[-1]:
        return F.interpolate(x, size=(height, width), mode="area")
    return F.interpolate(x, size=(height, width), mode="bicubic", align_corners=False).clamp(0, 1)
