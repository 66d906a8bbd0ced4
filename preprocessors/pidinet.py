"""PiDiNet soft edges with table5_pidinet.pth (the file ControlNet 1.1 and the aux packs
use): pixel-difference convolutions in the "carv4" pattern with CDCM dilation modules and
CSAM attention. Module and parameter names are those of the public file; the base width
and dilation width are read from it."""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .soft_edges import finish
from .weights import PIDINET, load_exact, read_state_dict, require_keys

PUBLIC_WIDTH, PUBLIC_DILATION = 60, 24
MULTIPLE = 8  # three 2x max-pools
# carv4: central, angular, radial pixel differences and a vanilla conv, repeated over 16 layers
_CARV4 = ("cd", "ad", "rd", "cv") * 4
_AD_ORDER = (3, 0, 1, 6, 4, 2, 7, 8, 5)            # each 3x3 tap minus its clockwise neighbour
_RD_OUTER = (0, 2, 4, 10, 14, 20, 22, 24)          # 5x5 ring taps that get +w
_RD_INNER = (6, 7, 8, 11, 13, 16, 17, 18)          # 3x3 ring taps that get -w


def _difference_kernel(op: str, w: torch.Tensor) -> tuple[torch.Tensor, int]:
    """The vanilla kernel (and its padding) equal to a pixel-difference convolution."""
    if op == "cv":
        return w, 1
    if op == "cd":  # x_i - x_center: subtract the kernel's sum at the centre tap
        k = w.clone()
        k[:, :, 1, 1] -= w.sum(dim=(2, 3))
        return k, 1
    flat = w.flatten(2)
    if op == "ad":
        return (flat - flat[:, :, list(_AD_ORDER)]).view_as(w), 1
    # rd: outer ring minus inner ring on a 5x5 footprint
    k = w.new_zeros(w.shape[0], w.shape[1], 25)
    k[:, :, list(_RD_OUTER)] = flat[:, :, 1:]
    k[:, :, list(_RD_INNER)] = -flat[:, :, 1:]
    return k.view(w.shape[0], w.shape[1], 5, 5), 2


class PixelDifferenceConv(nn.Module):
    def __init__(self, op: str, in_channels: int, out_channels: int, groups: int = 1):
        super().__init__()
        self.op, self.groups = op, groups
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, 3, 3))
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))  # nn.Conv2d's default

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel, padding = _difference_kernel(self.op, self.weight)
        return F.conv2d(x, kernel, padding=padding, groups=self.groups)


class PDCBlock(nn.Module):
    def __init__(self, op: str, in_channels: int, out_channels: int, stride: int = 1):
        super().__init__()
        self.stride = stride
        if stride > 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1)
        self.conv1 = PixelDifferenceConv(op, in_channels, in_channels, groups=in_channels)
        self.conv2 = nn.Conv2d(in_channels, out_channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        y = self.conv2(F.relu(self.conv1(x)))
        return y + (self.shortcut(x) if self.stride > 1 else x)


class CSAM(nn.Module):
    """Compact spatial attention: a sigmoid mask from a 4-channel bottleneck."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, 4, 1)
        self.conv2 = nn.Conv2d(4, 1, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv2(self.conv1(F.relu(x))))


class CDCM(nn.Module):
    """Compact dilated convolutions (dilations 5, 7, 9, 11) summed."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 1)
        for i, d in enumerate((5, 7, 9, 11)):
            setattr(self, f"conv2_{i + 1}", nn.Conv2d(out_channels, out_channels, 3, dilation=d, padding=d, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(F.relu(x))
        return sum(getattr(self, f"conv2_{i}")(x) for i in range(1, 5))


class MapReduce(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class PiDiNet(nn.Module):
    def __init__(self, width: int = PUBLIC_WIDTH, dilation: int = PUBLIC_DILATION):
        super().__init__()
        ops = _CARV4
        self.init_block = PixelDifferenceConv(ops[0], 3, width)
        stages = ((width, width, 3), (width, 2 * width, 4), (2 * width, 4 * width, 4), (4 * width, 4 * width, 4))
        layer = 1
        for s, (cin, cout, blocks) in enumerate(stages, start=1):
            for b in range(1, blocks + 1):
                stride = 2 if s > 1 and b == 1 else 1
                setattr(self, f"block{s}_{b}", PDCBlock(ops[layer], cin if b == 1 else cout, cout, stride))
                layer += 1
        fuse = [cout for _, cout, _ in stages]
        self.dilations = nn.ModuleList(CDCM(c, dilation) for c in fuse)
        self.attentions = nn.ModuleList(CSAM(dilation) for _ in fuse)
        self.conv_reduces = nn.ModuleList(MapReduce(dilation) for _ in fuse)
        self.classifier = nn.Conv2d(4, 1, 1)
        self._stage_blocks = [blocks for _, _, blocks in stages]

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 (B, 3, H, W) -> fused edge probability (B, 1, H, W). The network was
        trained on BGR input, so channels are swapped first."""
        size = rgb.shape[-2:]
        x = self.init_block(rgb.flip(1))
        side_maps = []
        for s, blocks in enumerate(self._stage_blocks, start=1):
            for b in range(1, blocks + 1):
                x = getattr(self, f"block{s}_{b}")(x)
            e = self.conv_reduces[s - 1](self.attentions[s - 1](self.dilations[s - 1](x)))
            side_maps.append(F.interpolate(e, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(self.classifier(torch.cat(side_maps, dim=1)))


def build_pidinet(path: str) -> PiDiNet:
    sd = read_state_dict(path, PIDINET.architecture)
    require_keys(sd, ["init_block.weight", "dilations.0.conv1.weight", "attentions.0.conv1.weight", "classifier.weight"],
                 PIDINET.architecture, path)
    net = PiDiNet(width=sd["init_block.weight"].shape[0], dilation=sd["dilations.0.conv1.weight"].shape[0])
    return load_exact(net, sd, PIDINET.architecture, path)


def load_pidinet(path: str):
    return load_cached(path, build_pidinet)


def pidinet_edges(patcher, images: torch.Tensor, detect_resolution: int = 512, safe: bool = False,
                  scribble: bool = False) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) soft edges at the images' own size."""
    def detect(net, chunk):
        return detect_then_restore(lambda x: finish(net(x), safe, scribble), to_rgb(chunk),
                                   detect_resolution, MULTIPLE, binary=scribble)

    return run_in_chunks(patcher, images, detect)
