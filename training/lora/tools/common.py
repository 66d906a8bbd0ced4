"""What every LoRA tool shares: a LoRA in memory, its weight differences, the low-rank
factorization of a difference, and the ss_* metadata that says what a tool did."""
import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..file import implementation_version, load_lora, save_lora
from . import lycoris

SVD_METHODS = ("exact", "lowrank")
# torch.svd_lowrank: extra random directions and power iterations beyond the rank asked for.
# With these, the rank-k error is within 1 % of the exact truncated SVD's on flat spectra
# (the worst case; bench/bench_lora_extract.py measures it on SDXL-sized random differences).
LOWRANK_OVERSAMPLE = 8
LOWRANK_NITER = 4


@dataclass
class LoRA:
    name: str
    modules: dict[str, dict[str, torch.Tensor]]
    metadata: dict[str, str] = field(default_factory=dict)
    # The file's module format: "lora" (kohya), or LyCORIS "loha" / "lokr" / "dora" (several
    # joined by "+"), whose modules were read as exact kohya factors of their full difference.
    source_format: str = "lora"

    @classmethod
    def load(cls, path: str, base: dict[str, torch.Tensor] | None = None) -> "LoRA":
        """base: kohya module name -> layer weight of the model, needed only by DoRA modules."""
        tensors, metadata = load_lora(str(path), kohya_only=False)
        modules, source_format = lycoris.read_modules(tensors, str(path), base)
        return cls(Path(path).stem, modules, dict(metadata), source_format)

    def require_kohya(self, tool: str) -> None:
        """Refuses a LyCORIS file for a tool that works on kohya's lora_up/lora_down themselves."""
        if self.source_format != "lora":
            raise ValueError(f"{tool} needs a kohya LoRA file; {self.name} is a LyCORIS {self.source_format} file, which "
                             "only merge (concat, svd), resize, block weights and inspect take (as its full difference)")

    def tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name, parts in self.modules.items():
            out[f"{name}.lora_down.weight"] = parts["down"]
            out[f"{name}.lora_up.weight"] = parts["up"]
            out[f"{name}.alpha"] = parts.get("alpha", torch.tensor(float(rank(parts))))
        return out

    def save(self, path: str, dtype: torch.dtype = torch.float32) -> dict[str, str]:
        return save_lora(str(path), self.tensors(), self.metadata, dtype)

    def delta(self, name: str) -> torch.Tensor:
        return delta(self.modules[name])

    @property
    def family(self) -> str | None:
        version = self.metadata.get("ss_base_model_version", "")
        if "sdxl" in version:
            return "sdxl"
        if version.startswith("sd_v1"):
            return "sd15"
        names = list(self.modules)
        if any(n.startswith(("lora_te1_", "lora_te2_", "lora_unet_input_blocks", "lora_unet_output_blocks",
                             "lora_unet_middle_block")) for n in names):
            return "sdxl"
        if any(n.startswith(("lora_te_", "lora_unet_down_blocks", "lora_unet_up_blocks", "lora_unet_mid_block")) for n in names):
            return "sd15"
        return None


def rank(parts: dict[str, torch.Tensor]) -> int:
    return parts["down"].shape[0]


def scale(parts: dict[str, torch.Tensor]) -> float:
    """alpha / rank; a missing or zero alpha means alpha = rank (as sd-scripts reads old files)."""
    alpha = float(parts["alpha"]) if "alpha" in parts else 0.0
    return alpha / rank(parts) if alpha else 1.0


def delta(parts: dict[str, torch.Tensor]) -> torch.Tensor:
    """The module's full weight difference up @ down * alpha / rank, in the layer's weight shape."""
    down, up = parts["down"].float(), parts["up"].float()
    out = up.shape[0]
    mat = up.reshape(out, -1) @ down.reshape(down.shape[0], -1)
    return mat.reshape(out, *down.shape[1:]) * scale(parts)


def is_conv3x3(weight: torch.Tensor) -> bool:
    return weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1)


def svd(mat: torch.Tensor, rank: int, method: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(U, S, Vh) of a 2-D matrix: all singular triplets ("exact") or the top `rank` of a
    randomized SVD ("lowrank"), in float32."""
    if method not in SVD_METHODS:
        raise ValueError(f"SVD method must be one of {SVD_METHODS}, got {method!r}")
    mat = mat.float()
    small = min(mat.shape)
    if method == "exact" or rank + LOWRANK_OVERSAMPLE >= small:
        return torch.linalg.svd(mat, full_matrices=False)
    # Seeded in a forked generator: the same file every run, and the caller's RNG untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        U, S, V = torch.svd_lowrank(mat, q=rank + LOWRANK_OVERSAMPLE, niter=LOWRANK_NITER)
    return U, S, V.T


def factor(weight: torch.Tensor, rank: int, method: str = "exact", clamp_quantile: float | None = None,
           svd_result=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(up, down) in kohya's layout with up @ down ~ weight at `rank` (capped at the matrix's
    rank), singular values folded into up. clamp_quantile: both clamped to +-(that quantile of
    their values), as sd-scripts does; None: no clamping (the optimal rank-k fit)."""
    out = weight.shape[0]
    mat = weight.reshape(out, -1)
    rank = max(1, min(rank, *mat.shape))
    U, S, Vh = svd_result if svd_result is not None else svd(mat, rank, method)
    up = U[:, :rank] * S[:rank]
    down = Vh[:rank]
    if clamp_quantile is not None:
        hi = _quantile(torch.cat([up.flatten(), down.flatten()]), clamp_quantile)
        up, down = up.clamp(-hi, hi), down.clamp(-hi, hi)
    if weight.dim() == 4:
        return up.reshape(out, rank, 1, 1).contiguous(), down.reshape(rank, *weight.shape[1:]).contiguous()
    return up.contiguous(), down.contiguous()


def _quantile(values: torch.Tensor, q: float) -> torch.Tensor:
    # torch.quantile refuses inputs above 2**24 elements; kthvalue computes the same
    # linearly interpolated quantile on any size.
    n = values.numel()
    pos = q * (n - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    a = values.kthvalue(lo + 1).values
    b = values.kthvalue(hi + 1).values if hi != lo else a
    return a + (b - a) * (pos - lo)


def module(up: torch.Tensor, down: torch.Tensor, alpha: float) -> dict[str, torch.Tensor]:
    return {"down": down, "up": up, "alpha": torch.tensor(float(alpha))}


def network_metadata(sources: list[LoRA], dim, alpha, network_args: dict | None = None,
                     family: str | None = None) -> dict[str, str]:
    """The minimal network keys sd-scripts' build_minimum_network_metadata writes, with the
    base-model keys (ss_base_model_version, ss_v2, modelspec.*) of the first source that has them."""
    meta = {}
    for src in sources:
        if "ss_base_model_version" in src.metadata:
            meta.update({k: v for k, v in src.metadata.items()
                         if k in ("ss_base_model_version", "ss_v2") or k.startswith("modelspec.")})
            break
    if not meta and family is not None:
        from ..file import base_model_metadata
        meta.update(base_model_metadata(family))
    meta.update({
        "ss_network_module": "networks.lora",
        "ss_network_dim": str(dim),
        "ss_network_alpha": str(alpha),
        "ss_network_args": json.dumps(network_args or {}),
    })
    if "modelspec.sai_model_spec" in meta:
        meta["modelspec.implementation_version"] = implementation_version()
    return meta


def tool_metadata(tool: str, comment: str, **facts) -> dict[str, str]:
    """ss_lora_tool (which tool), ss_lora_tool_args (JSON of what it did: sources, ratios,
    ranks ...), ss_training_comment (one sentence, as sd-scripts' tools write it)."""
    return {"ss_lora_tool": tool, "ss_lora_tool_args": json.dumps(facts), "ss_training_comment": comment}


def source_facts(lora: LoRA) -> dict:
    """How a source file is named in a tool's metadata: its name and sshs hash when known, and
    its format when it is a LyCORIS file (read as its full difference; a DoRA's on a base model)."""
    facts = {"name": lora.name, "sshs_model_hash": lora.metadata.get("sshs_model_hash")}
    if lora.source_format != "lora":
        facts["format"] = lora.source_format
    return facts


def network_rank_summary(modules: dict[str, dict[str, torch.Tensor]]) -> tuple[str, str, dict]:
    """(ss_network_dim, ss_network_alpha, network_args) of a module set: the plain values when
    all non-3x3 modules share one rank/alpha (and all 3x3 ones another), else "Dynamic"."""
    lin = {(rank(p), float(p["alpha"])) for p in modules.values() if not is_conv3x3(p["down"])}
    conv = {(rank(p), float(p["alpha"])) for p in modules.values() if is_conv3x3(p["down"])}
    dim, alpha = (str(next(iter(lin))[0]), str(next(iter(lin))[1])) if len(lin) == 1 else ("Dynamic", "Dynamic")
    args = {}
    if len(conv) == 1:
        args = {"conv_dim": str(next(iter(conv))[0]), "conv_alpha": str(next(iter(conv))[1])}
    elif conv:
        args = {"conv_dim": "Dynamic", "conv_alpha": "Dynamic"}
    return dim, alpha, args
