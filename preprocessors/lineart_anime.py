"""Anime lineart with netG.pth (ControlNet 1.1's lineart_anime annotator): a pix2pix U-Net
(8 levels, 64 wide, instance norm without parameters) drawing dark lines on white,
inverted here to white on black. The modules nest as in the public file
(model.model.1.model.3...), so it loads as it is; the width and depth are read from it."""
import torch
import torch.nn as nn

from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .weights import LINEART_ANIME, load_exact, read_state_dict, require_keys

ARCH = LINEART_ANIME.architecture
PUBLIC_WIDTH, PUBLIC_LEVELS = 64, 8
MULTIPLE = 256  # eight stride-2 levels; the reference also works at multiples of 256


def _norm(channels: int) -> nn.Module:
    return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)


class UnetSkipConnectionBlock(nn.Module):
    """One level: down (conv 4x4 stride 2), the inner levels, up (transposed conv), and
    the input concatenated to the result - except at the outermost level."""

    def __init__(self, outer: int, inner: int, submodule: nn.Module | None = None, in_channels: int | None = None,
                 outermost: bool = False):
        super().__init__()
        self.outermost = outermost
        down = nn.Conv2d(in_channels or outer, inner, 4, stride=2, padding=1)
        if outermost:
            layers = [down, submodule, nn.ReLU(), nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), nn.Tanh()]
        elif submodule is None:  # innermost
            layers = [nn.LeakyReLU(0.2), down, nn.ReLU(), nn.ConvTranspose2d(inner, outer, 4, stride=2, padding=1),
                      _norm(outer)]
        else:
            layers = [nn.LeakyReLU(0.2), down, _norm(inner), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner * 2, outer, 4, stride=2, padding=1), _norm(outer)]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x) if self.outermost else torch.cat([x, self.model(x)], 1)


class UnetGenerator(nn.Module):
    def __init__(self, width: int = PUBLIC_WIDTH, levels: int = PUBLIC_LEVELS, in_channels: int = 3,
                 out_channels: int = 1):
        super().__init__()
        block = UnetSkipConnectionBlock(width * 8, width * 8)
        for _ in range(levels - 5):
            block = UnetSkipConnectionBlock(width * 8, width * 8, block)
        for outer, inner in ((4, 8), (2, 4), (1, 2)):
            block = UnetSkipConnectionBlock(width * outer, width * inner, block)
        self.model = UnetSkipConnectionBlock(out_channels, width, block, in_channels, outermost=True)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 -> drawing 0..1, white paper, dark lines (the network works in -1..1)."""
        return (self.model(rgb * 2.0 - 1.0) + 1.0) / 2.0


def build_lineart_anime(path: str) -> UnetGenerator:
    sd = read_state_dict(path, ARCH)
    require_keys(sd, ["model.model.0.weight", "model.model.1.model.1.weight", "model.model.3.weight"], ARCH, path)
    # level n's layers are named with n + 1 "model." parts: the deepest tells the depth
    levels = max(k.count("model.") for k in sd) - 1
    first = sd["model.model.0.weight"]
    net = UnetGenerator(width=first.shape[0], levels=levels, in_channels=first.shape[1],
                        out_channels=sd["model.model.3.weight"].shape[1])
    return load_exact(net, sd, ARCH, path)


def load_lineart_anime(path: str):
    return load_cached(path, build_lineart_anime)


def lineart_anime(patcher, images: torch.Tensor, detect_resolution: int = 512) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) white lines on black at the images' own size."""
    def detect(net, chunk):
        return detect_then_restore(lambda x: 1.0 - net(x)[:, :1].clamp(0, 1), to_rgb(chunk), detect_resolution,
                                   MULTIPLE)

    return run_in_chunks(patcher, images, detect)
