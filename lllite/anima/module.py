"""kohya's Anima-LLLite v2 network in plain PyTorch, with the parameter names of the published
files (`lllite_conditioning1.*`, `lllite_dit_blocks_<N>_<target>.{down,mid,cond_to_film,up,
depth_embed}`), so state_dict() is the file.

One conditioning tower turns the guide (3 channels, or 4 for inpainting: image + mask) into
one embedding per DiT token (the guide is 16x the token grid: two stride-4 convolutions). Each
module wraps one Linear input of a DiT block (self-attention q/k/v, cross-attention q, the
MLP's first layer) and adds `up(silu(FiLM(mid(cat[cond, silu(down(x))]))))`, cond being the
shared embedding plus the module's own depth embedding.
"""
import re

import torch
import torch.nn.functional as F
from torch import nn

TARGETS = ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "cross_attn_q_proj", "mlp_layer1")
# The DiT Linear each target wraps (the module adds to that Linear's input).
TARGET_LINEARS = {
    "self_attn_q_proj": "self_attn.q_proj", "self_attn_k_proj": "self_attn.k_proj",
    "self_attn_v_proj": "self_attn.v_proj", "cross_attn_q_proj": "cross_attn.q_proj", "mlp_layer1": "mlp.layer1",
}
MODULE_RE = re.compile(r"lllite_dit_blocks_(\d+)_(" + "|".join(TARGETS) + r")")
GUIDE_STRIDE = 16  # guide pixels per conditioning token
DEFAULT_ASPP = (1, 2, 4, 8)


def module_name(block: int, target: str) -> str:
    return f"lllite_dit_blocks_{block}_{target}"


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = 8  # the largest of 8, 4, 2, 1 dividing the channels, as the published files use
    while groups > 1 and channels % groups:
        groups //= 2
    return nn.GroupNorm(groups, channels)


class ResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.norm1, self.conv1 = _group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)
        self.norm2, self.conv2 = _group_norm(channels), nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x):
        return x + self.conv2(F.silu(self.norm2(self.conv1(F.silu(self.norm1(x))))))


class ASPP(nn.Module):
    """Parallel dilated convolutions plus a global-pool branch, fused by a 1x1 convolution."""

    def __init__(self, channels: int, dilations: tuple):
        super().__init__()
        self.branches = nn.ModuleList(
            nn.Sequential(nn.Conv2d(channels, channels, 1) if d == 1 else nn.Conv2d(channels, channels, 3, padding=d, dilation=d),
                          _group_norm(channels), nn.SiLU())
            for d in dilations)
        self.global_conv = nn.Sequential(nn.Conv2d(channels, channels, 1), _group_norm(channels), nn.SiLU())
        self.proj = nn.Sequential(nn.Conv2d(channels * (len(dilations) + 1), channels, 1), _group_norm(channels), nn.SiLU())

    def forward(self, x):
        pooled = self.global_conv(x.mean(dim=(-2, -1), keepdim=True))
        out = [b(x) for b in self.branches] + [F.interpolate(pooled, size=x.shape[-2:], mode="bilinear", align_corners=False)]
        return self.proj(torch.cat(out, dim=1))


class Conditioning(nn.Module):
    """Guide (B, C, 16h, 16w) in [-1, 1] -> embedding (B, h*w, cond_emb_dim)."""

    def __init__(self, in_channels: int, cond_dim: int, cond_emb_dim: int, resblocks: int, aspp: tuple):
        super().__init__()
        half = cond_dim // 2
        self.conv1, self.norm1 = nn.Conv2d(in_channels, half, 4, stride=4), _group_norm(half)
        self.conv2, self.norm2 = nn.Conv2d(half, half, 3, padding=1), _group_norm(half)
        self.conv3, self.norm3 = nn.Conv2d(half, cond_dim, 4, stride=4), _group_norm(cond_dim)
        self.resblocks = nn.ModuleList(ResBlock(cond_dim) for _ in range(resblocks))
        self.aspp = ASPP(cond_dim, aspp) if aspp else None
        self.proj = nn.Conv2d(cond_dim, cond_emb_dim, 1)
        self.out_norm = nn.LayerNorm(cond_emb_dim)

    def forward(self, x):
        x = F.silu(self.norm1(self.conv1(x)))
        x = F.silu(self.norm2(self.conv2(x)))
        x = F.silu(self.norm3(self.conv3(x)))
        for block in self.resblocks:
            x = block(x)
        if self.aspp is not None:
            x = self.aspp(x)
        return self.out_norm(self.proj(x).flatten(2).transpose(1, 2))


class Module(nn.Module):
    def __init__(self, in_dim: int, cond_emb_dim: int, mlp_dim: int):
        super().__init__()
        self.in_dim, self.mlp_dim = in_dim, mlp_dim
        self.down = nn.Linear(in_dim, mlp_dim)
        self.mid = nn.Linear(mlp_dim + cond_emb_dim, mlp_dim)
        self.cond_to_film = nn.Linear(cond_emb_dim, 2 * mlp_dim)
        self.up = nn.Linear(mlp_dim, in_dim)
        self.depth_embed = nn.Parameter(torch.zeros(cond_emb_dim))

    def delta(self, x: torch.Tensor, cond_emb: torch.Tensor) -> torch.Tensor:
        """What the module adds to x (B, N, in_dim); cond_emb (B, N, E)."""
        cond = cond_emb + self.depth_embed.to(cond_emb.dtype)
        hidden = F.silu(self.down(x))
        gamma, beta = self.cond_to_film(cond).chunk(2, dim=-1)
        hidden = self.mid(torch.cat((cond, hidden), dim=-1))
        return self.up(F.silu(hidden * (1 + gamma) + beta))


class AnimaLLLiteNetwork(nn.Module):
    """The conditioning tower and the modules (by block index and target) of one file."""

    def __init__(self, in_channels: int, cond_dim: int, cond_emb_dim: int, resblocks: int, aspp: tuple,
                 modules: dict, mlp_dim: int, inpaint_masked_input: bool = False, name: str = "Anima LLLite"):
        """modules: {(block index, target): DiT width}."""
        super().__init__()
        if cond_dim < 2 or cond_dim % 2:
            raise ValueError(f"cond_dim must be an even number >= 2, got {cond_dim}")
        self.name = name
        self.in_channels, self.cond_dim, self.cond_emb_dim, self.mlp_dim = in_channels, cond_dim, cond_emb_dim, mlp_dim
        self.aspp_dilations = tuple(aspp)
        self.inpaint_masked_input = inpaint_masked_input
        self.lllite_conditioning1 = Conditioning(in_channels, cond_dim, cond_emb_dim, resblocks, self.aspp_dilations)
        self.targets = {}  # (block, target) -> module name
        for (block, target), width in sorted(modules.items()):
            if target not in TARGETS:
                raise ValueError(f"unknown Anima LLLite target {target!r}; known: {TARGETS}")
            self.add_module(module_name(block, target), Module(width, cond_emb_dim, mlp_dim))
            self.targets[(block, target)] = module_name(block, target)

    @property
    def inpainting(self) -> bool:
        return self.in_channels == 4

    def module(self, block: int, target: str) -> Module | None:
        name = self.targets.get((block, target))
        return None if name is None else getattr(self, name)

    def encode(self, guide: torch.Tensor) -> torch.Tensor:
        return self.lllite_conditioning1(guide)

    def widths(self) -> dict:
        return {k: getattr(self, n).in_dim for k, n in self.targets.items()}

    def check_fits(self, diffusion_model: nn.Module, model_name: str) -> None:
        """Every module's Linear must exist in the DiT with the module's width; otherwise raise
        naming the file, the model and the first mismatches (before any sampling)."""
        layers = dict(diffusion_model.named_modules())
        problems = []
        for (block, target), width in self.widths().items():
            path = f"blocks.{block}.{TARGET_LINEARS[target]}"
            have = getattr(layers.get(path), "in_features", None)
            if have != width:
                problems.append(f"{path} " + ("does not exist in the model" if have is None else f"has width {have} in the model, {width} in the file"))
        if problems:
            raise ValueError(f"Anima LLLite '{self.name}' does not fit the model {model_name}: {'; '.join(problems[:3])}"
                             + (f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""))

    def describe(self) -> str:
        blocks = sorted({b for b, _ in self.targets})
        kind = "inpainting (image + mask)" if self.inpainting else "any-type (3-channel guide)"
        return (f"Anima LLLite v2, {kind}, {len(self.targets)} modules on {len(blocks)} DiT blocks, "
                f"cond_emb_dim {self.cond_emb_dim} / network_dim {self.mlp_dim}")


def build_for_model(diffusion_model: nn.Module, in_channels: int = 3, cond_dim: int = 32, cond_emb_dim: int = 32,
                    mlp_dim: int = 64, resblocks: int = 1, aspp: tuple = DEFAULT_ASPP, targets: tuple = TARGETS,
                    inpaint_masked_input: bool = False, name: str = "Anima LLLite") -> AnimaLLLiteNetwork:
    """A new network with a module on every target of every DiT block (torch's default init,
    `up` zeroed so training starts at the bare model; depth embeddings start at zero)."""
    layers = dict(diffusion_model.named_modules())
    modules = {(b, t): layers[f"blocks.{b}.{TARGET_LINEARS[t]}"].in_features
               for b in range(len(diffusion_model.blocks)) for t in targets}
    net = AnimaLLLiteNetwork(in_channels, cond_dim, cond_emb_dim, resblocks, aspp, modules, mlp_dim,
                             inpaint_masked_input, name)
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, Module):
                m.up.weight.zero_()
                m.up.bias.zero_()
    return net


def copy_to(network: AnimaLLLiteNetwork, device, dtype) -> AnimaLLLiteNetwork:
    """A frozen copy on device/dtype; tensors already there are shared, except inference tensors
    when autograd is on (they cannot take part in it)."""
    with torch.device("meta"):
        copy = AnimaLLLiteNetwork(network.in_channels, network.cond_dim, network.cond_emb_dim,
                                  len(network.lllite_conditioning1.resblocks), network.aspp_dilations,
                                  network.widths(), network.mlp_dim, network.inpaint_masked_input, network.name)
    grad = not torch.is_inference_mode_enabled()
    state = {}
    for k, v in network.state_dict().items():
        v = v.detach().to(device=device, dtype=dtype)
        state[k] = v.clone() if grad and v.is_inference() else v
    copy.load_state_dict(state, assign=True)
    return copy.eval().requires_grad_(False)
