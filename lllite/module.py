"""LLLite modules with kohya-ss/sd-scripts' exact structure (networks/control_net_lllite.py),
and the per-model module sets (layouts) for SDXL and SD1.5.

One module wraps one Linear of the U-Net (attn1 to_q/to_k/to_v, attn2 to_q of a transformer
block) and adds `up(mid(cat[cond_emb, down(x)]))` to that Linear's input. Parameter names
(conditioning1.<i>, down.0, mid.0, up.0) are the saved keys, so they must not change.
"""
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

# Linears of a transformer block that get a module; attn2 k/v read the text context.
TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn2.to_q")

# Guide pixels per embedding token for each conditioning depth.
DEPTH_STRIDE = {1: 8, 2: 16, 3: 32}

_PATH_RE = re.compile(
    r"^(?:input_blocks\.(?P<input>\d+)|middle_block|output_blocks\.(?P<output>\d+))\.(?P<sub>\d+)"
    r"\.transformer_blocks\.(?P<tb>\d+)\.(?P<target>attn1\.to_[qkv]|attn2\.to_q)$"
)


@dataclass(frozen=True)
class Layout:
    """Which U-Net blocks get modules and the conditioning depth of each: the depth's stride
    (DEPTH_STRIDE) puts the embedding on the block's token grid."""

    family: str
    display: str
    architecture: str  # SAI model-spec id written into saved files
    blocks: dict  # transformer path prefix -> depth


# kohya's rule (input index <= 2 -> 1, <= 5 -> 2, else 3; middle -> 3) on SDXL's transformer blocks:
# input 4,5 at latent/2 = image/16, input 7,8 and middle at latent/4 = image/32.
SDXL_LAYOUT = Layout(
    "sdxl", "SDXL", "stable-diffusion-xl-v1-base/control-net-lllite",
    {"input_blocks.4.1": 2, "input_blocks.5.1": 2, "input_blocks.7.1": 3, "input_blocks.8.1": 3, "middle_block.1": 3},
)
# The same rule on SD1.5 (docs/lllite_sd15.md): input 1,2 at latent/1 = image/8, 4,5 at image/16,
# 7,8 at image/32 match exactly; the middle block (latent/8 = image/64) keeps depth 3 and its
# embedding is averaged 2x2 onto the middle grid by the patch's grid matching, so files stay
# readable by every kohya-format loader.
SD15_LAYOUT = Layout(
    "sd15", "SD1.5", "stable-diffusion-v1/control-net-lllite",
    {"input_blocks.1.1": 1, "input_blocks.2.1": 1, "input_blocks.4.1": 2, "input_blocks.5.1": 2,
     "input_blocks.7.1": 3, "input_blocks.8.1": 3, "middle_block.1": 3},
)
LAYOUTS = {layout.family: layout for layout in (SDXL_LAYOUT, SD15_LAYOUT)}  # kohya's default: no output blocks


def _with_output_blocks(layout: Layout, output_blocks: dict) -> Layout:
    return Layout(layout.family, f"{layout.display} with output blocks", layout.architecture,
                  {**layout.blocks, **output_blocks})


# kohya's SKIP_OUTPUT_BLOCKS = False: modules on the decoder's transformers too. kohya's rule
# (output index <= 2 -> 3, <= 5 -> 2) puts SDXL's output 0-2 (image/32) and 3-5 (image/16) on
# their grids. SD1.5's decoder runs one level deeper (3-5 at image/32, 6-8 at /16, 9-11 at /8),
# so its depths follow the grid instead: every embedding lands on its block's token grid.
OUTPUT_LAYOUTS = {
    "sdxl": _with_output_blocks(SDXL_LAYOUT, {f"output_blocks.{i}.1": 3 if i <= 2 else 2 for i in range(6)}),
    "sd15": _with_output_blocks(SD15_LAYOUT, {f"output_blocks.{i}.1": 3 if i <= 5 else 2 if i <= 8 else 1
                                              for i in range(3, 12)}),
}


def layout_for(family: str, output_blocks: bool = False) -> Layout:
    """The module layout of a new LLLite for `family` ("sdxl", "sd15"); output_blocks adds the
    decoder's transformers (kohya's SKIP_OUTPUT_BLOCKS = False)."""
    if family not in LAYOUTS:
        raise ValueError(f"ControlNet-LLLite supports {', '.join(l.display for l in LAYOUTS.values())} models; "
                         f"this model is {family}")
    return (OUTPUT_LAYOUTS if output_blocks else LAYOUTS)[family]


def kohya_name(path: str) -> str:
    """U-Net module path -> the module's key prefix in kohya files."""
    return "lllite_unet_" + path.replace(".", "_")


def unet_path(name: str) -> str | None:
    """Inverse of kohya_name (underscores are ambiguous, so the path grammar is matched)."""
    m = re.fullmatch(
        r"lllite_unet_(input_blocks_(\d+)|middle_block|output_blocks_(\d+))_(\d+)_transformer_blocks_(\d+)_(attn1_to_[qkv]|attn2_to_q)",
        name,
    )
    if m is None:
        return None
    block = m.group(1).replace("blocks_", "blocks.")
    return f"{block}.{m.group(4)}.transformer_blocks.{m.group(5)}.{m.group(6).replace('_to_', '.to_')}"


def block_key(path: str) -> tuple[tuple, str]:
    """U-Net path -> ((block kind, block id, transformer index), target) as ComfyUI's
    extra_options name them: ("input", 4, 0), ("middle", 0, 9), target "attn1.to_q"."""
    m = _PATH_RE.match(path)
    if m is None:
        raise ValueError(f"{path} is not a transformer-block attention Linear")
    if m.group("input") is not None:
        block = ("input", int(m.group("input")))
    elif m.group("output") is not None:
        block = ("output", int(m.group("output")))
    else:
        block = ("middle", 0)
    return (*block, int(m.group("tb"))), m.group("target")


class LLLiteModule(nn.Module):
    def __init__(self, in_dim: int, cond_emb_dim: int, mlp_dim: int, depth: int):
        super().__init__()
        if depth not in DEPTH_STRIDE:
            raise ValueError(f"conditioning depth must be 1, 2 or 3, got {depth}")
        half = cond_emb_dim // 2
        layers = [nn.Conv2d(3, half, 4, 4)]
        if depth == 1:
            layers += [nn.ReLU(), nn.Conv2d(half, cond_emb_dim, 2, 2)]
        elif depth == 2:
            layers += [nn.ReLU(), nn.Conv2d(half, cond_emb_dim, 4, 4)]
        else:
            layers += [nn.ReLU(), nn.Conv2d(half, half, 4, 4), nn.ReLU(), nn.Conv2d(half, cond_emb_dim, 2, 2)]
        self.conditioning1 = nn.Sequential(*layers)
        self.down = nn.Sequential(nn.Linear(in_dim, mlp_dim), nn.ReLU())
        self.mid = nn.Sequential(nn.Linear(mlp_dim + cond_emb_dim, mlp_dim), nn.ReLU())
        self.up = nn.Sequential(nn.Linear(mlp_dim, in_dim))
        nn.init.zeros_(self.up[0].weight)  # kohya: starts as a no-op (the up bias is not zeroed)
        self.in_dim, self.cond_emb_dim, self.mlp_dim, self.depth = in_dim, cond_emb_dim, mlp_dim, depth

    @property
    def stride(self) -> int:
        return DEPTH_STRIDE[self.depth]

    def embed(self, guide: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) guide in [-1, 1] -> (B, E, H/stride, W/stride) conditioning embedding."""
        return self.conditioning1(guide)

    def project_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """(B, T, E) embedding tokens -> their share of `mid`'s pre-activation, bias included.
        mid(cat[e, d]) = e @ We.T + b + d @ Wd.T: this part is fixed per guide, so it is computed once."""
        w = self.mid[0].weight
        return F.linear(tokens, w[:, : self.cond_emb_dim], self.mid[0].bias)

    def project_guide(self, guide: torch.Tensor, height: int, width: int) -> torch.Tensor:
        """(G, 3, H, W) guide in [-1, 1] -> (G, height*width, R) projected embedding on a block's
        token grid. Sizes that are not multiples of 32 (and SD1.5's middle block) give a grid
        other than the embedding's: it is resampled bilinearly (an exact 2x shrink is a 2x2 mean)."""
        emb = self.embed(guide)
        if emb.shape[-2:] != (height, width):
            emb = F.interpolate(emb, size=(height, width), mode="bilinear", align_corners=False)
        return self.project_embedding(emb.flatten(2).transpose(1, 2))

    def delta(self, x: torch.Tensor, projected: torch.Tensor, dropout: float = 0.0) -> torch.Tensor:
        """What the module adds to the Linear's input x (B, T, C), before the multiplier.
        `projected` (G, T, R) comes from project_guide; B must be a multiple of G and x's batch
        laid out as B/G consecutive groups of G (ComfyUI's cond/uncond chunks). dropout acts
        after `mid` in training mode only, as in kohya's trainer."""
        mid = self.mid[0].weight[:, self.cond_emb_dim:]
        up = [(self.up[0].weight, self.up[0].bias)]
        return _deltas(x, projected, self.down[0].weight, self.down[0].bias, mid, up, dropout if self.training else 0.0)[0]


class ModuleGroup:
    """Modules of one transformer block that read the same input (attn1's to_q/to_k/to_v read
    the same normed tokens), computed together: down projections concatenated, mid projections
    block-diagonal, one up projection each. Same math as LLLiteModule.delta with a third of the
    kernel launches and one read of the input; built from frozen (placed) modules."""

    def __init__(self, modules: list[LLLiteModule]):
        self.modules = modules
        self.down_weight = torch.cat([m.down[0].weight for m in modules])
        self.down_bias = torch.cat([m.down[0].bias for m in modules])
        self.mid_weight = torch.block_diag(*[m.mid[0].weight[:, m.cond_emb_dim:] for m in modules])
        self.ups = [(m.up[0].weight, m.up[0].bias) for m in modules]

    def project_guide(self, guide: torch.Tensor, height: int, width: int) -> torch.Tensor:
        return torch.cat([m.project_guide(guide, height, width) for m in self.modules], dim=-1)

    def deltas(self, x: torch.Tensor, projected: torch.Tensor) -> list[torch.Tensor]:
        """One delta per module (see LLLiteModule.delta); `projected` from project_guide."""
        return _deltas(x, projected, self.down_weight, self.down_bias, self.mid_weight, self.ups, 0.0)


def _deltas(x, projected, down_weight, down_bias, mid_weight, ups, dropout):
    """kohya's module math, split at mid: up(relu(mid(cat[e, relu(down(x))]))) with
    mid(cat[e, d]) = d @ Wd.T + (e @ We.T + b), the bracket being `projected` (G, T, sum R)."""
    b, t, _ = x.shape
    g = projected.shape[0]
    d = F.linear(torch.relu(F.linear(x, down_weight, down_bias)), mid_weight)
    h = torch.relu(d.view(b // g, g, t, -1) + projected).view(b, t, -1)
    if dropout:
        h = F.dropout(h, p=dropout)
    out, start = [], 0
    for weight, bias in ups:
        out.append(F.linear(h[..., start:start + weight.shape[1]], weight, bias))
        start += weight.shape[1]
    return out


class LLLiteNetwork(nn.Module):
    """The modules of one LLLite file, registered under their kohya key prefixes so that
    state_dict() is the file's content."""

    def __init__(self, modules: dict[str, LLLiteModule], name: str = "LLLite"):
        super().__init__()
        self.name = name
        self.paths = {}
        self.by_block = {}  # (kind, id, transformer index) -> {target: module key}
        for path, module in sorted(modules.items()):
            key = kohya_name(path)
            self.add_module(key, module)
            self.paths[key] = path
            block, target = block_key(path)
            self.by_block.setdefault(block, {})[target] = key

    def module(self, key: str) -> LLLiteModule:
        return self._modules[key]

    def copy_to(self, device: torch.device, dtype: torch.dtype, multiplier: float = 1.0) -> "LLLiteNetwork":
        """A frozen copy on `device` in `dtype`; tensors already there are shared (never modified),
        except inference tensors when autograd is on. multiplier (kohya's: up(h) * m) is folded
        into the up projection, saving a multiplication per module and step."""
        with torch.device("meta"):
            modules = {
                path: LLLiteModule(m.in_dim, m.cond_emb_dim, m.mlp_dim, m.depth)
                for path, m in ((p, self.module(k)) for k, p in self.paths.items())
            }
        copy = LLLiteNetwork(modules, self.name)

        def place(key, t):
            if multiplier != 1.0 and ".up.0." in key:
                t = t.to(device=device, dtype=torch.float32) * multiplier
            t = t.to(device=device, dtype=dtype)
            return t.clone() if t.is_inference() and not torch.is_inference_mode_enabled() else t

        copy.load_state_dict({k: place(k, v) for k, v in self.state_dict().items()}, assign=True)
        return copy.requires_grad_(False)

    def describe(self) -> str:
        mods = [self.module(k) for k in self.paths]
        dims = sorted({(m.cond_emb_dim, m.mlp_dim) for m in mods})
        dim_text = ", ".join(f"cond_emb_dim {e} / network_dim {r}" for e, r in dims)
        return f"{len(mods)} modules, {dim_text}, {self.layout_name()} layout"

    def layout(self) -> Layout | None:
        """The known layout whose blocks these modules sit on, None for a custom one."""
        blocks = {p.split(".transformer_blocks.")[0] for p in self.paths.values()}
        return next((l for l in (*LAYOUTS.values(), *OUTPUT_LAYOUTS.values()) if blocks == set(l.blocks)), None)

    def layout_name(self) -> str:
        layout = self.layout()
        return layout.display if layout else "custom"

    def check_fits(self, diffusion_model: nn.Module, model_name: str) -> None:
        """Every module's Linear must exist in the model with the module's width; otherwise
        raise naming the file, the model and the first mismatches (before any sampling)."""
        linears = dict(diffusion_model.named_modules())
        problems = []
        for key, path in self.paths.items():
            target = linears.get(path)
            want = self.module(key).in_dim
            if target is None:
                problems.append(f"{path} (width {want}) does not exist in the model")
            elif getattr(target, "in_features", None) != want:
                problems.append(f"{path} has width {getattr(target, 'in_features', '?')} in the model, {want} in the file")
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ValueError(
                f"LLLite '{self.name}' ({self.describe()}) does not fit the model {model_name}: "
                + "; ".join(problems[:3]) + more
                + ". Use an LLLite trained for this model family."
            )


def layout_modules(diffusion_model: nn.Module, layout: Layout) -> dict[str, int]:
    """U-Net path -> conditioning depth for every Linear the layout puts a module on."""
    out = {}
    for path, _ in diffusion_model.named_modules():
        m = _PATH_RE.match(path)
        if m is None:
            continue
        prefix = path.split(".transformer_blocks.")[0]
        if prefix in layout.blocks:
            out[path] = layout.blocks[prefix]
    if not out:
        raise ValueError(f"the model has none of the {layout.family} LLLite blocks {sorted(layout.blocks)}")
    return out


def build_network(diffusion_model: nn.Module, layout: Layout, cond_emb_dim: int, mlp_dim: int, name: str = "LLLite") -> LLLiteNetwork:
    """A freshly initialised network (kohya's init) for the model's blocks in `layout`."""
    linears = dict(diffusion_model.named_modules())
    modules = {
        path: LLLiteModule(linears[path].in_features, cond_emb_dim, mlp_dim, depth)
        for path, depth in layout_modules(diffusion_model, layout).items()
    }
    return LLLiteNetwork(modules, name)
