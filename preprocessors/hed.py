"""HED soft edges with the ControlNetHED.pth weights (lllyasviel's Apache-2.0 HED of
ControlNet 1.1): the module and parameter names below are those of the public file
(`norm`, `block1`..`block5` with `convs.N` and `projection`), so it loads as it is.
Widths are read from the file, so any width of the same architecture loads."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .soft_edges import finish
from .weights import HED, load_exact, read_state_dict, require_keys

# VGG16 stages: output widths and conv layers per stage, as in ControlNetHED.pth
PUBLIC_WIDTHS = (64, 128, 256, 512, 512)
PUBLIC_LAYERS = (2, 2, 3, 3, 3)
MULTIPLE = 16  # four 2x max-pools: sides that divide evenly keep the five side outputs aligned


class DoubleConvBlock(nn.Module):
    """A VGG stage (3x3 conv + ReLU, `layers` times) and its 1x1 side-output projection."""

    def __init__(self, in_channels: int, out_channels: int, layers: int):
        super().__init__()
        self.convs = nn.Sequential(nn.Conv2d(in_channels, out_channels, 3, padding=1),
                                   *[nn.Conv2d(out_channels, out_channels, 3, padding=1) for _ in range(layers - 1)])
        self.projection = nn.Conv2d(out_channels, 1, 1)

    def forward(self, x: torch.Tensor, down_sampling: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        if down_sampling:
            x = F.max_pool2d(x, kernel_size=2, stride=2)
        for conv in self.convs:
            x = F.relu(conv(x))
        return x, self.projection(x)


class ControlNetHED_Apache2(nn.Module):  # noqa: N801 - the public architecture's name
    def __init__(self, widths=PUBLIC_WIDTHS, layers=PUBLIC_LAYERS):
        super().__init__()
        self.norm = nn.Parameter(torch.zeros(1, 3, 1, 1))  # learned mean subtracted from 0-255 RGB
        chans = (3, *widths)
        for i in range(5):
            setattr(self, f"block{i + 1}", DoubleConvBlock(chans[i], chans[i + 1], layers[i]))

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 (B, 3, H, W) -> soft edges 0..1 (B, 1, H, W): the mean of the five side
        outputs, each upsampled to the input size, through a sigmoid."""
        h = rgb * 255.0 - self.norm
        size = rgb.shape[-2:]
        sides = []
        for i in range(5):
            h, side = getattr(self, f"block{i + 1}")(h, down_sampling=i > 0)
            sides.append(F.interpolate(side, size=size, mode="bilinear", align_corners=False))
        return torch.sigmoid(torch.stack(sides).mean(0))


def build_hed(path: str) -> ControlNetHED_Apache2:
    sd = read_state_dict(path, HED.architecture)
    require_keys(sd, ["norm"] + [f"block{i}.convs.0.weight" for i in range(1, 6)], HED.architecture, path)
    widths = tuple(sd[f"block{i}.convs.0.weight"].shape[0] for i in range(1, 6))
    layers = tuple(sum(1 for k in sd if k.startswith(f"block{i}.convs.") and k.endswith(".weight")) for i in range(1, 6))
    return load_exact(ControlNetHED_Apache2(widths, layers), sd, HED.architecture, path)


def load_hed(path: str):
    return load_cached(path, build_hed)


def hed_edges(patcher, images: torch.Tensor, detect_resolution: int = 512, safe: bool = False,
              scribble: bool = False) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) soft edges at the images' own size."""
    def detect(net, chunk):
        return detect_then_restore(lambda x: finish(net(x), safe, scribble), to_rgb(chunk),
                                   detect_resolution, MULTIPLE, binary=scribble)

    return run_in_chunks(patcher, images, detect)
