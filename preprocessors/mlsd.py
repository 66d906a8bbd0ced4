"""M-LSD straight lines with mlsd_large_512_fp32.pth (MobileV2_MLSD_Large, as in
ControlNet): a MobileNetV2 trunk and a U-shaped decoder predict, at half resolution, a
line-centre heat map and each centre's two end-point displacements. Module and parameter
names are those of the public file. Lines are drawn one pixel wide at the output size."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .image_ops import resize, to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_size
from .weights import MLSD, load_exact, read_state_dict, require_keys

MULTIPLE = 32          # the trunk downsamples 16x and the decoder concatenates skip features
MAX_LINES = 200        # centre candidates kept per image, as in the reference decoder
_PEAK_WINDOW = 3


def _conv_bn(cin: int, cout: int, kernel: int, *, stride: int = 1, padding: int = 0, dilation: int = 1,
             groups: int = 1, bias: bool = True, act: type | None = nn.ReLU) -> list[nn.Module]:
    layers = [nn.Conv2d(cin, cout, kernel, stride, padding, dilation=dilation, groups=groups, bias=bias),
              nn.BatchNorm2d(cout)]
    return layers + ([act()] if act else [])


class ConvBNReLU(nn.Sequential):
    """Conv + BN + ReLU6; stride-2 convs pad right/bottom only, as the TFLite original did."""

    def __init__(self, cin: int, cout: int, kernel: int = 3, stride: int = 1, groups: int = 1):
        padding = 0 if stride == 2 else (kernel - 1) // 2
        super().__init__(*_conv_bn(cin, cout, kernel, stride=stride, padding=padding, groups=groups, bias=False,
                                   act=nn.ReLU6))
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == 2:
            x = F.pad(x, (0, 1, 0, 1))
        return super().forward(x)


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.residual = stride == 1 and cin == cout
        layers = [ConvBNReLU(cin, hidden, kernel=1)] if expand != 1 else []
        layers += [ConvBNReLU(hidden, hidden, stride=stride, groups=hidden),
                   nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.residual else self.conv(x)


class MobileNetV2(nn.Module):
    # (expansion, channels, repeats, first stride): MobileNetV2 cut after the 96-channel stage
    SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1))
    TAPS = (1, 3, 6, 10, 13)  # feature indices whose outputs feed the decoder

    def __init__(self):
        super().__init__()
        features, cin = [ConvBNReLU(4, 32, stride=2)], 32
        for t, c, n, s in self.SETTING:
            for i in range(n):
                features.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        self.features = nn.Sequential(*features)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for i, f in enumerate(self.features):
            x = f(x)
            if i in self.TAPS:
                taps.append(x)
        return taps


class BlockTypeA(nn.Module):
    """Merge a skip feature `a` with the decoder's `b` (upsampled 2x unless told not to)."""

    def __init__(self, in_c1: int, in_c2: int, out_c1: int, out_c2: int, upscale: bool = True):
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(in_c2, out_c2, 1))
        self.conv2 = nn.Sequential(*_conv_bn(in_c1, out_c1, 1))
        self.upscale = upscale

    def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        b = self.conv1(b)
        if self.upscale:
            b = F.interpolate(b, scale_factor=2.0, mode="bilinear", align_corners=True)
        return torch.cat((self.conv2(a), b), dim=1)


class BlockTypeB(nn.Module):
    def __init__(self, in_c: int, out_c: int):
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(in_c, in_c, 3, padding=1))
        self.conv2 = nn.Sequential(*_conv_bn(in_c, out_c, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(self.conv1(x) + x)


class BlockTypeC(nn.Module):
    def __init__(self, in_c: int, out_c: int):
        super().__init__()
        self.conv1 = nn.Sequential(*_conv_bn(in_c, in_c, 3, padding=5, dilation=5))
        self.conv2 = nn.Sequential(*_conv_bn(in_c, in_c, 3, padding=1))
        self.conv3 = nn.Conv2d(in_c, out_c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv3(self.conv2(self.conv1(x)))


class MobileV2_MLSD_Large(nn.Module):  # noqa: N801 - the public architecture's name
    def __init__(self):
        super().__init__()
        self.backbone = MobileNetV2()
        self.block15 = BlockTypeA(64, 96, 64, 64, upscale=False)
        self.block16 = BlockTypeB(128, 64)
        self.block17 = BlockTypeA(32, 64, 64, 64)
        self.block18 = BlockTypeB(128, 64)
        self.block19 = BlockTypeA(24, 64, 64, 64)
        self.block20 = BlockTypeB(128, 64)
        self.block21 = BlockTypeA(16, 64, 64, 64)
        self.block22 = BlockTypeB(128, 64)
        self.block23 = BlockTypeC(64, 16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) scaled to -1..1 -> (B, 9, H/2, W/2): centre logits, then the
        displacements (x_start, y_start, x_end, y_end) in half-resolution pixels."""
        c1, c2, c3, c4, c5 = self.backbone(x)
        x = self.block16(self.block15(c4, c5))
        x = self.block18(self.block17(c3, x))
        x = self.block20(self.block19(c2, x))
        x = self.block22(self.block21(c1, x))
        return self.block23(x)[:, 7:]

    def predict(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 -> network output. The reference appends a constant 1 (on the 0-255
        scale) as a fourth channel before scaling everything to -1..1."""
        ones = torch.full_like(rgb[:, :1], 1.0 / 255.0)
        return self(torch.cat([rgb, ones], dim=1) * 2.0 - 1.0)


def decode_segments(output: torch.Tensor, score_threshold: float, distance_threshold: float):
    """Network output (B, 9, h, w) -> segments (B, K, 4) as (x0, y0, x1, y1) in input pixels
    (twice the output grid) and a (B, K) mask of the ones that pass both thresholds."""
    b, _, h, w = output.shape
    heat = torch.sigmoid(output[:, 0:1])
    peaks = F.max_pool2d(heat, _PEAK_WINDOW, stride=1, padding=_PEAK_WINDOW // 2)
    heat = (heat * (peaks == heat)).flatten(1)
    scores, index = heat.topk(min(MAX_LINES, h * w), dim=1)
    disp = output[:, 1:5].flatten(2).gather(2, index.unsqueeze(1).expand(-1, 4, -1)).transpose(1, 2)
    centre = torch.stack([index % w, torch.div(index, w, rounding_mode="floor")], dim=-1).to(disp.dtype)
    start, end = centre + disp[..., 0:2], centre + disp[..., 2:4]
    length = (start - end).norm(dim=-1)
    keep = (scores > score_threshold) & (length > distance_threshold)
    return torch.cat([start, end], dim=-1) * 2.0, keep


def draw_segments(segments: torch.Tensor, keep: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Rasterise segments (B, K, 4) into (B, 1, height, width) one-pixel lines. End points
    are truncated to whole pixels, as the reference's int() does. On CPU the reference's
    own rasteriser (cv2.line) draws them; elsewhere all segments are drawn at once by
    sampling each at (longest extent + 1) points, which can differ from cv2.line by one
    pixel where a line passes exactly between two pixels or leaves the image."""
    segments = segments.trunc()
    if segments.device.type == "cpu":
        return _draw_with_opencv(segments, keep, height, width)
    b, k, _ = segments.shape
    canvas = torch.zeros(b, height * width, device=segments.device)
    if k == 0 or not bool(keep.any()):
        return canvas.view(b, 1, height, width)
    x0, y0, x1, y1 = segments.unbind(-1)
    steps = int(torch.maximum((x1 - x0).abs(), (y1 - y0).abs())[keep].max().ceil().item()) + 1
    t = torch.linspace(0, 1, steps, device=segments.device).view(1, 1, -1)
    xs = (x0.unsqueeze(-1) + (x1 - x0).unsqueeze(-1) * t).round().long()
    ys = (y0.unsqueeze(-1) + (y1 - y0).unsqueeze(-1) * t).round().long()
    inside = keep.unsqueeze(-1) & (xs >= 0) & (xs < width) & (ys >= 0) & (ys < height)
    flat = (ys * width + xs).clamp(0, height * width - 1)
    canvas.scatter_reduce_(1, flat.view(b, -1), inside.view(b, -1).float(), reduce="amax")
    return canvas.view(b, 1, height, width)


def _draw_with_opencv(segments: torch.Tensor, keep: torch.Tensor, height: int, width: int) -> torch.Tensor:
    import cv2
    import numpy as np

    canvas = np.zeros((segments.shape[0], height, width), np.float32)
    for i, (lines, kept) in enumerate(zip(segments.long().tolist(), keep.tolist())):
        for (x0, y0, x1, y1), k in zip(lines, kept):
            if k:
                cv2.line(canvas[i], (x0, y0), (x1, y1), 1.0, 1)
    return torch.from_numpy(canvas).unsqueeze(1)


def build_mlsd(path: str) -> MobileV2_MLSD_Large:
    sd = read_state_dict(path, MLSD.architecture)
    require_keys(sd, ["backbone.features.0.0.weight", "block15.conv1.0.weight", "block23.conv3.weight"],
                 MLSD.architecture, path)
    return load_exact(MobileV2_MLSD_Large(), sd, MLSD.architecture, path)


def load_mlsd(path: str):
    return load_cached(path, build_mlsd)


def mlsd_lines(patcher, images: torch.Tensor, detect_resolution: int = 512, score_threshold: float = 0.1,
               distance_threshold: float = 0.1) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) white straight lines on black at the images' size."""
    def detect(net, chunk):
        height, width = chunk.shape[-2:]
        h, w = detect_size(height, width, detect_resolution, MULTIPLE)
        segments, keep = decode_segments(net.predict(resize(to_rgb(chunk), h, w)), score_threshold, distance_threshold)
        scale = segments.new_tensor([width / w, height / h, width / w, height / h])
        return draw_segments(segments * scale, keep, height, width)

    return run_in_chunks(patcher, images, detect)
