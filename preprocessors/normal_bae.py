"""Surface normals from BAE (Bae et al., "Estimating and Exploiting the Aleatoric
Uncertainty in Surface Normal Estimation", the ScanNet model scannet.pt that ControlNet
1.1's normalbae annotator runs). The encoder is timm's tf_efficientnet_b5 (the file's
encoder keys are timm's names); the decoder below keeps the file's names. At inference
the decoder refines every pixel: 1/8 -> 1/4 -> 1/2 -> full resolution, each step a
per-pixel MLP on upsampled features plus the previous estimate.

The map is the annotator's: the unit normal (x, y, z) as RGB = (n + 1) / 2. These are the
colours ControlNet 1.1's normalbae model was trained on; they are not those of
normal_map.normals_from_depth (ControlNet 1.0's normal-from-MiDaS convention)."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from .depth import IMAGENET_MEAN, IMAGENET_STD
from .image_ops import to_rgb
from .models import load_cached, run_in_chunks
from .resolution import detect_then_restore
from .weights import NORMAL_BAE, load_exact, read_state_dict, require_keys

ARCH = NORMAL_BAE.architecture
MULTIPLE = 32  # the encoder downsamples five times
DEFAULT_RESOLUTION = 512
BACKBONE = "tf_efficientnet_b5"
# EfficientNet-B5 block groups whose outputs the decoder reads (widths 24, 40, 64, 176)
SKIPS = (0, 1, 2, 4)


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        import timm

        self.original_model = timm.create_model(BACKBONE, pretrained=False, num_classes=0)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The skip features and the head convolution's output (before its norm, as BAE reads it)."""
        net = self.original_model
        x = net.bn1(net.conv_stem(x))  # timm's norm carries the activation
        feats = []
        for group in net.blocks:
            x = group(x)
            feats.append(x)
        return [feats[i] for i in SKIPS] + [net.conv_head(x)]


class UpSampleBN(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self._net = nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU(),
                                  nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.LeakyReLU())

    def forward(self, x, skip):
        x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return self._net(torch.cat([x, skip], dim=1))


def _refiner(cin: int) -> nn.Sequential:
    """Per-pixel MLP (1x1 Conv1d over flattened pixels): features + estimate -> normal + kappa."""
    return nn.Sequential(nn.Conv1d(cin, 128, 1), nn.ReLU(), nn.Conv1d(128, 128, 1), nn.ReLU(),
                         nn.Conv1d(128, 128, 1), nn.ReLU(), nn.Conv1d(128, 4, 1))


def _normalise(out: torch.Tensor) -> torch.Tensor:
    """(B, 4, ...) -> unit normal and the concentration kappa (> 0.01), as BAE trains them."""
    n, kappa = out[:, :3], out[:, 3:]
    n = n / (torch.sqrt((n ** 2).sum(1, keepdim=True)) + 1e-10)
    return torch.cat([n, F.elu(kappa) + 1.01], dim=1)


class Decoder(nn.Module):
    def __init__(self, skips=(24, 40, 64, 176), head: int = 2048):
        super().__init__()
        self.conv2 = nn.Conv2d(head, head, 1)
        self.up1 = UpSampleBN(head + skips[3], 1024)
        self.up2 = UpSampleBN(1024 + skips[2], 512)
        self.up3 = UpSampleBN(512 + skips[1], 256)
        self.up4 = UpSampleBN(256 + skips[0], 128)
        self.out_conv_res8 = nn.Conv2d(512, 4, 3, padding=1)
        self.out_conv_res4, self.out_conv_res2, self.out_conv_res1 = _refiner(516), _refiner(260), _refiner(132)

    @staticmethod
    def _refine(mlp: nn.Sequential, feats: torch.Tensor, estimate: torch.Tensor) -> torch.Tensor:
        up = torch.cat([F.interpolate(t, scale_factor=2, mode="bilinear", align_corners=True) for t in (feats, estimate)], 1)
        b, c, h, w = up.shape
        return _normalise(mlp(up.view(b, c, -1))).view(b, 4, h, w)

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        """-> (B, 4, H, W): unit normal and kappa at the input's resolution."""
        s0, s1, s2, s3, head = features
        d1 = self.up1(self.conv2(head), s3)
        d2 = self.up2(d1, s2)
        d3 = self.up3(d2, s1)
        d4 = self.up4(d3, s0)
        out = _normalise(self.out_conv_res8(d2))
        out = self._refine(self.out_conv_res4, d2, out)
        out = self._refine(self.out_conv_res2, d3, out)
        return self._refine(self.out_conv_res1, d4, out)


class NormalBae(nn.Module):
    """RGB 0..1 (B, 3, H, W), sides multiples of 32 -> normal map 0..1 (B, 3, H, W)."""

    def __init__(self):
        super().__init__()
        self.encoder, self.decoder = Encoder(), Decoder()

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        mean, std = (torch.tensor(v, dtype=rgb.dtype, device=rgb.device).view(1, 3, 1, 1)
                     for v in (IMAGENET_MEAN, IMAGENET_STD))
        normal = self.decoder(self.encoder((rgb - mean) / std))[:, :3]
        return ((normal + 1) * 0.5).clamp(0, 1)


def build_normal_bae(path: str) -> NormalBae:
    sd = read_state_dict(path, ARCH)
    require_keys(sd, ["encoder.original_model.conv_stem.weight", "decoder.conv2.weight",
                      "decoder.out_conv_res1.6.weight"], ARCH, path)
    with torch.device("meta"):  # the file's tensors replace the parameters: nothing to initialise
        net = NormalBae()
    return load_exact(net, sd, ARCH, path, assign=True)


def load_normal_bae(path: str):
    return load_cached(path, build_normal_bae)


def normal_bae(patcher, images: torch.Tensor, detect_resolution: int = DEFAULT_RESOLUTION) -> torch.Tensor:
    """(B, C, H, W) 0..1 -> (B, 3, H, W) normal map at the images' own size."""
    def detect(net, chunk):
        return detect_then_restore(net, to_rgb(chunk), detect_resolution, MULTIPLE)

    return run_in_chunks(patcher, images, detect)
