"""MiDaS v3 DPT networks as the original files hold them (dpt_hybrid-midas-501f0c75.pt,
ControlNet's depth annotator, and dpt_large-midas-2f21e586.pt): a ViT (on a ResNet-50 stem
for Hybrid, on 16x16 patches for Large) whose token maps are reassembled into a feature
pyramid and fused into inverse depth. Module and parameter names are those of the files,
so they load as they are. Unlike transformers' DPT, any size that is a multiple of 32 runs:
the position embeddings are resized to the token grid, as MiDaS does."""
import torch
import torch.nn as nn
import torch.nn.functional as F

PATCH = 16
MULTIPLE = 32  # the deepest map is the token grid downsampled once more
_HEAD_DIM = 64
# the ViT blocks whose outputs feed the pyramid (Hybrid takes its two finest maps from the ResNet)
HYBRID_TAPS, LARGE_TAPS = (8, 11), (5, 11, 17, 23)
# the classifier head and final norm of the ViT are stored in the files but are not on DPT's path
UNUSED_PREFIXES = ("pretrained.model.head.", "pretrained.model.norm.")


def _pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    """TensorFlow 'SAME' padding (the extra pixel goes right/bottom), as the ResNet was trained."""
    def amount(size):
        return max((-(-size // stride) - 1) * stride + kernel - size, 0)

    ph, pw = amount(x.shape[-2]), amount(x.shape[-1])
    return F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2), value=value)


class StdConv2dSame(nn.Conv2d):
    """Convolution with weight standardisation (each filter to zero mean, unit variance)."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1):
        super().__init__(cin, cout, kernel, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = F.batch_norm(self.weight.reshape(1, self.out_channels, -1), None, None, training=True, momentum=0.0,
                         eps=1e-8).reshape_as(self.weight)
        return F.conv2d(_pad_same(x, self.kernel_size[0], self.stride[0]), w, None, self.stride)


def _gn(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(32, channels, eps=1e-5)


class ConvNorm(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv, self.norm = StdConv2dSame(cin, cout, 1, stride), _gn(cout)

    def forward(self, x):
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """ResNet v1.5 bottleneck (stride on the 3x3) with group norm."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        mid = cout // 4
        self.downsample = ConvNorm(cin, cout, stride) if stride != 1 or cin != cout else None
        self.conv1, self.norm1 = StdConv2dSame(cin, mid, 1), _gn(mid)
        self.conv2, self.norm2 = StdConv2dSame(mid, mid, 3, stride), _gn(mid)
        self.conv3, self.norm3 = StdConv2dSame(mid, cout, 1), _gn(cout)

    def forward(self, x):
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        return F.relu(self.norm3(self.conv3(x)) + shortcut)


class Stage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, stride: int):
        super().__init__()
        self.blocks = nn.Sequential(*[Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1)
                                      for i in range(depth)])

    def forward(self, x):
        return self.blocks(x)


class Stem(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.norm = StdConv2dSame(3, 64, 7, 2), _gn(64)

    def forward(self, x):
        x = F.relu(self.norm(self.conv(x)))
        return F.max_pool2d(_pad_same(x, 3, 2, value=float("-inf")), 3, 2)


class ResNetStem(nn.Module):
    """The three ResNet-50 stages DPT-Hybrid embeds (strides 4, 8, 16); all three outputs."""

    def __init__(self, depths=(3, 4, 9), widths=(256, 512, 1024)):
        super().__init__()
        self.stem = Stem()
        chans = (64, *widths)
        self.stages = nn.ModuleList(Stage(chans[i], chans[i + 1], depths[i], 1 if i == 0 else 2) for i in range(3))

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for stage in self.stages:
            x = stage(x)
            outs.append(x)
        return outs


class PatchEmbed(nn.Module):
    def __init__(self, dim: int, hybrid: bool):
        super().__init__()
        if hybrid:
            self.backbone = ResNetStem()
            self.proj = nn.Conv2d(1024, dim, 1)
        else:
            self.proj = nn.Conv2d(3, dim, PATCH, stride=PATCH)


class Attention(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.heads = dim // _HEAD_DIM
        self.qkv, self.proj = nn.Linear(dim, dim * 3), nn.Linear(dim, dim)

    def forward(self, x):
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))


class Mlp(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, dim * 4), nn.Linear(dim * 4, dim)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.norm1, self.attn = nn.LayerNorm(dim, eps=1e-6), Attention(dim)
        self.norm2, self.mlp = nn.LayerNorm(dim, eps=1e-6), Mlp(dim)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, dim: int, depth: int, hybrid: bool, grid: int = 24):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, grid * grid + 1, dim))
        self.patch_embed = PatchEmbed(dim, hybrid)
        self.blocks = nn.ModuleList(Block(dim) for _ in range(depth))

    def position(self, gh: int, gw: int) -> torch.Tensor:
        """The 24x24 position embeddings resized (bilinear) to a gh x gw token grid."""
        grid = self.pos_embed[0, 1:]
        side = int(grid.shape[0] ** 0.5)
        grid = grid.reshape(1, side, side, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid, size=(gh, gw), mode="bilinear").permute(0, 2, 3, 1).reshape(1, gh * gw, -1)
        return torch.cat([self.pos_embed[:, :1], grid], dim=1)


class ProjectReadout(nn.Module):
    """Each token concatenated with the class token, projected back to the width."""

    def __init__(self, dim: int):
        super().__init__()
        self.project = nn.Sequential(nn.Linear(2 * dim, dim), nn.GELU())

    def forward(self, x):
        return self.project(torch.cat([x[:, 1:], x[:, :1].expand_as(x[:, 1:])], -1))


class Reassemble(nn.Module):
    """Tokens -> a feature map at `factor` times the token grid. Submodules are numbered as
    in the files' nn.Sequential (1 and 2 were the parameter-free transpose/unflatten)."""

    def __init__(self, dim: int, width: int, factor: float):
        super().__init__()
        self.add_module("0", ProjectReadout(dim))
        self.add_module("3", nn.Conv2d(dim, width, 1))
        if factor > 1:
            self.add_module("4", nn.ConvTranspose2d(width, width, int(factor), stride=int(factor)))
        elif factor < 1:
            self.add_module("4", nn.Conv2d(width, width, 3, stride=2, padding=1))

    def forward(self, tokens: torch.Tensor, gh: int, gw: int) -> torch.Tensor:
        x = getattr(self, "0")(tokens).transpose(1, 2).unflatten(2, (gh, gw))
        x = getattr(self, "3")(x)
        return getattr(self, "4")(x) if hasattr(self, "4") else x


class ResidualConvUnit(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.conv1, self.conv2 = nn.Conv2d(width, width, 3, padding=1), nn.Conv2d(width, width, 3, padding=1)

    def forward(self, x):
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FeatureFusionBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.out_conv = nn.Conv2d(width, width, 1)
        self.resConfUnit1, self.resConfUnit2 = ResidualConvUnit(width), ResidualConvUnit(width)  # noqa: N815

    def forward(self, x, skip=None):
        if skip is not None:
            x = x + self.resConfUnit1(skip)
        x = F.interpolate(self.resConfUnit2(x), scale_factor=2, mode="bilinear", align_corners=True)
        return self.out_conv(x)


class Interpolate(nn.Module):
    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class Scratch(nn.Module):
    def __init__(self, in_widths, width: int = 256):
        super().__init__()
        for i, cin in enumerate(in_widths, 1):
            setattr(self, f"layer{i}_rn", nn.Conv2d(cin, width, 3, padding=1, bias=False))
            setattr(self, f"refinenet{i}", FeatureFusionBlock(width))
        self.output_conv = nn.Sequential(nn.Conv2d(width, width // 2, 3, padding=1), Interpolate(),
                                         nn.Conv2d(width // 2, 32, 3, padding=1), nn.ReLU(),
                                         nn.Conv2d(32, 1, 1), nn.ReLU())


class Pretrained(nn.Module):
    def __init__(self, dim: int, depth: int, hybrid: bool, widths):
        super().__init__()
        self.model = ViT(dim, depth, hybrid)
        if not hybrid:
            self.act_postprocess1 = Reassemble(dim, widths[0], 4)
            self.act_postprocess2 = Reassemble(dim, widths[1], 2)
        self.act_postprocess3 = Reassemble(dim, widths[2], 1)
        self.act_postprocess4 = Reassemble(dim, widths[3], 0.5)


class MidasDPT(nn.Module):
    """Normalised RGB (-1..1) (B, 3, H, W), sides multiples of 32 -> inverse depth (B, 1, H, W)."""

    def __init__(self, hybrid: bool = True, dim: int = 768, depth: int = 12, fusion: int = 256):
        super().__init__()
        self.hybrid = hybrid
        widths = (256, 512, 768, 768) if hybrid else (256, 512, 1024, 1024)
        self.taps = HYBRID_TAPS if hybrid else LARGE_TAPS
        self.pretrained = Pretrained(dim, depth, hybrid, widths)
        self.scratch = Scratch(widths, fusion)

    def pyramid(self, x: torch.Tensor) -> list[torch.Tensor]:
        vit = self.pretrained.model
        gh, gw = x.shape[-2] // PATCH, x.shape[-1] // PATCH
        maps = []
        if self.hybrid:
            *maps, x = vit.patch_embed.backbone(x)  # strides 4 and 8 feed the pyramid directly
        tokens = vit.patch_embed.proj(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([vit.cls_token.expand(tokens.shape[0], -1, -1), tokens], 1) + vit.position(gh, gw)
        taps = []
        for i, block in enumerate(vit.blocks[: self.taps[-1] + 1]):
            tokens = block(tokens)
            if i in self.taps:
                taps.append(tokens)
        first = 5 - len(taps)
        maps += [getattr(self.pretrained, f"act_postprocess{first + i}")(t, gh, gw) for i, t in enumerate(taps)]
        return maps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.scratch
        l1, l2, l3, l4 = (getattr(s, f"layer{i}_rn")(m) for i, m in enumerate(self.pyramid(x), 1))
        path = s.refinenet4(l4)
        path = s.refinenet3(path, l3)
        path = s.refinenet2(path, l2)
        path = s.refinenet1(path, l1)
        return s.output_conv(path)
