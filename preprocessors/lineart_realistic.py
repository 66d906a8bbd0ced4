"""Realistic lineart with sk_model.pth / sk_model2.pth (the informative-drawings
Generator that ControlNet 1.1 ships as "lineart" and "lineart coarse"): a ResNet-style
image-to-image network drawing dark lines on white, inverted here to white on black.
Module and parameter names are those of the public files; the base width and the number
of residual blocks are read from the file."""
import torch
import torch.nn as nn

from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .weights import LINEART, load_exact, read_state_dict, require_keys

# two stride-2 convolutions undone by two transposed ones; the 1-pixel reflection padding
# of the residual blocks needs at least 2x2 after both
MULTIPLE = 8
PUBLIC_WIDTH, PUBLIC_RESIDUAL_BLOCKS = 64, 3


class ResidualBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_block = nn.Sequential(
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels), nn.ReLU(),
            nn.ReflectionPad2d(1), nn.Conv2d(channels, channels, 3), nn.InstanceNorm2d(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv_block(x)


class Generator(nn.Module):
    def __init__(self, width: int = PUBLIC_WIDTH, residual_blocks: int = PUBLIC_RESIDUAL_BLOCKS,
                 in_channels: int = 3, out_channels: int = 1):
        super().__init__()
        self.model0 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(in_channels, width, 7),
                                    nn.InstanceNorm2d(width), nn.ReLU())
        down, c = [], width
        for _ in range(2):
            down += [nn.Conv2d(c, 2 * c, 3, stride=2, padding=1), nn.InstanceNorm2d(2 * c), nn.ReLU()]
            c *= 2
        self.model1 = nn.Sequential(*down)
        self.model2 = nn.Sequential(*[ResidualBlock(c) for _ in range(residual_blocks)])
        up = []
        for _ in range(2):
            up += [nn.ConvTranspose2d(c, c // 2, 3, stride=2, padding=1, output_padding=1),
                   nn.InstanceNorm2d(c // 2), nn.ReLU()]
            c //= 2
        self.model3 = nn.Sequential(*up)
        self.model4 = nn.Sequential(nn.ReflectionPad2d(3), nn.Conv2d(width, out_channels, 7), nn.Sigmoid())

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        """RGB 0..1 -> drawing 0..1, white paper, dark lines."""
        return self.model4(self.model3(self.model2(self.model1(self.model0(rgb)))))


def build_lineart(path: str) -> Generator:
    sd = read_state_dict(path, LINEART.architecture)
    require_keys(sd, ["model0.1.weight", "model1.0.weight", "model2.0.conv_block.1.weight", "model4.1.weight"],
                 LINEART.architecture, path)
    blocks = len({k.split(".")[1] for k in sd if k.startswith("model2.")})
    net = Generator(width=sd["model0.1.weight"].shape[0], residual_blocks=blocks,
                    in_channels=sd["model0.1.weight"].shape[1], out_channels=sd["model4.1.weight"].shape[0])
    return load_exact(net, sd, LINEART.architecture, path)


def load_lineart(path: str):
    return load_cached(path, build_lineart)


def lineart_realistic(patcher, images: torch.Tensor, detect_resolution: int = 512) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 1, H, W) white lines on black at the images' own size."""
    def detect(net, chunk):
        return detect_then_restore(lambda x: 1.0 - net(x)[:, :1], to_rgb(chunk), detect_resolution, MULTIPLE)

    return run_in_chunks(patcher, images, detect)
