"""Manga lineart with erika.pth (ControlNet 1.1's manga_line annotator, from ljsabc's
MangaLineExtraction): a residual U-Net on the grey picture (0-255) that draws dark lines on
white paper, inverted here to white on black for the lineart_anime model.

The network: five downsampling stages of pre-activation residual units (batch norm,
LeakyReLU 0.2, conv; 2, 3, 5, 7, 12 units, the last unit of stages 1-4 with stride 2), four
upsampling stages (7, 5, 3, 2 units, the first unit of each upsampling by nearest
neighbour) whose outputs are added to the matching encoder stage, a final 2-unit stage and a
1x1 pre-activation convolution to one channel. Modules nest and are named as in the public
file (block0.model.0.conv1.model.0...), so it loads as it is; the widths are read from it."""
import torch
import torch.nn as nn

from .image_ops import to_gray
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .weights import LINEART_MANGA, load_exact, read_state_dict, require_keys

ARCH = LINEART_MANGA.architecture
PUBLIC_WIDTH, PUBLIC_HEAD_WIDTH = 24, 16
DOWN_UNITS, UP_UNITS, HEAD_UNITS = (2, 3, 5, 7, 12), (7, 5, 3, 2), 2
MULTIPLE = 16  # four stride-2 stages


class _Named(nn.Module):
    """Holds its layers as `model`, the name every level of the public file uses."""

    def __init__(self, *layers: nn.Module):
        super().__init__()
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def _bn_act_conv(cin: int, cout: int, k: int, stride: int = 1, upsample: bool = False) -> _Named:
    layers = [nn.BatchNorm2d(cin, eps=1e-3), nn.LeakyReLU(0.2), nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2)]
    return _Named(*layers, *([nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []))


class _Unit(nn.Module):
    """Two pre-activation 3x3 convolutions plus a shortcut, which is a 1x1 convolution
    (upsampled too in an upsampling unit) when the shape changes and the input otherwise."""

    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.conv1 = _bn_act_conv(cin, cout, 3, stride, upsample)
        self.residual = _bn_act_conv(cout, cout, 3)
        self.shortcut = _Shortcut(cin, cout, stride, upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x, self.residual(self.conv1(x)))


class _Shortcut(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1, upsample: bool = False):
        super().__init__()
        self.model = None
        if cin != cout or stride != 1:
            up = [nn.Upsample(scale_factor=2, mode="nearest")] if upsample else []
            self.model = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride), *up)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (x if self.model is None else self.model(x)) + y


def _down_stage(cin: int, cout: int, units: int, downsample: bool) -> _Named:
    return _Named(*[_Unit(cin if i == 0 else cout, cout, 2 if downsample and i == units - 1 else 1)
                    for i in range(units)])


def _up_stage(cin: int, cout: int, units: int) -> _Named:
    return _Named(*[_Unit(cin, cout, upsample=True) if i == 0 else _Unit(cout, cout) for i in range(units)])


class MangaLineNet(nn.Module):
    def __init__(self, width: int = PUBLIC_WIDTH, head_width: int = PUBLIC_HEAD_WIDTH):
        super().__init__()
        widths = [width * 2 ** i for i in range(len(DOWN_UNITS))]
        cin = 1
        for i, (cout, units) in enumerate(zip(widths, DOWN_UNITS)):
            setattr(self, f"block{i}", _down_stage(cin, cout, units, downsample=i > 0))
            cin = cout
        for i, units in enumerate(UP_UNITS):
            cout = widths[-2 - i]
            setattr(self, f"block{5 + i}", _up_stage(cin, cout, units))
            setattr(self, f"res{1 + i}", _Shortcut(cout, cout))  # identity: adds the encoder stage
            cin = cout
        self.block9 = _down_stage(cin, head_width, HEAD_UNITS, downsample=False)
        self.conv15 = _bn_act_conv(head_width, 1, 1)

    def forward(self, gray255: torch.Tensor) -> torch.Tensor:
        """(B, 1, H, W) grey 0..255, sides multiples of 16 -> drawing, about 0..255 (white paper)."""
        skips = []
        x = gray255
        for i in range(5):
            x = getattr(self, f"block{i}")(x)
            skips.append(x)
        for i in range(4):
            x = getattr(self, f"res{1 + i}")(skips[3 - i], getattr(self, f"block{5 + i}")(x))
        return self.conv15(self.block9(x))


def build_lineart_manga(path: str) -> MangaLineNet:
    sd = read_state_dict(path, ARCH)
    first, head = "block0.model.0.conv1.model.2.weight", "conv15.model.2.weight"
    require_keys(sd, [first, head, "block4.model.11.residual.model.2.weight"], ARCH, path)
    net = MangaLineNet(width=sd[first].shape[0], head_width=sd[head].shape[1])
    return load_exact(net, sd, ARCH, path)


def load_lineart_manga(path: str):
    return load_cached(path, build_lineart_manga)


def lineart_manga(patcher, images: torch.Tensor, detect_resolution: int = 512) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) white lines on black at the images' own size."""
    def detect(net, chunk):
        # the network reads 8-bit grey levels as floats, as the reference feeds it
        def lines(gray: torch.Tensor) -> torch.Tensor:
            return 1.0 - net((gray * 255.0).round()).clamp(0, 255) / 255.0

        return detect_then_restore(lines, to_gray(chunk), detect_resolution, MULTIPLE)

    return run_in_chunks(patcher, images, detect)
