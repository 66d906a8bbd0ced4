"""Merge several LoRAs into one.

- concat: exact. Each input's modules are stacked along the rank (rank = sum of ranks), its
  ratio * block weight * alpha/rank folded into its up and down (sqrt of the magnitude each,
  the sign on up), alpha = new rank; so the merged difference is exactly the weighted sum.
- weighted: sd-scripts' merge_lora.py without --concat, for LoRAs of equal ranks: down and up
  summed separately with sqrt(alpha/base_alpha) * ratio (|.| on up), alpha of the first LoRA.
  Not the sum of the differences (cross terms), but what kohya users get.
- svd: sd-scripts' svd_merge_lora.py. The weighted sum of the differences, truncated to a
  new rank (3x3 convs to their own), alpha = rank, clamped at a quantile as sd-scripts does.
"""
import math

import torch

from . import block_weights
from .common import (LoRA, factor, is_conv3x3, module, network_metadata, network_rank_summary, rank, scale,
                     source_facts, tool_metadata)


def _ratios(loras: list[LoRA], ratios) -> list[float]:
    if not loras:
        raise ValueError("merge: no LoRA given")
    ratios = [1.0] * len(loras) if ratios is None else [float(r) for r in ratios]
    if len(ratios) != len(loras):
        raise ValueError(f"merge: {len(loras)} LoRAs but {len(ratios)} ratios")
    return ratios


def _block_multipliers(loras: list[LoRA], block_ratios) -> list[dict[str, float]]:
    """Per LoRA: module name -> block weight (1 everywhere when no vector is given)."""
    if block_ratios is None:
        block_ratios = [None] * len(loras)
    if len(block_ratios) != len(loras):
        raise ValueError(f"merge: {len(loras)} LoRAs but {len(block_ratios)} block-weight vectors")
    out = []
    for lora, spec in zip(loras, block_ratios):
        if spec is None or (isinstance(spec, str) and not spec.strip()):  # blank: no block weights
            out.append(dict.fromkeys(lora.modules, 1.0))
            continue
        family = lora.family
        if family is None:
            raise ValueError(f"merge: {lora.name}: cannot tell SD1.5 from SDXL for its block weights")
        out.append(block_weights.module_multipliers(lora.modules, block_weights.parse(spec, family), family))
    return out


def _module_names(loras: list[LoRA]) -> list[str]:
    return list(dict.fromkeys(n for lora in loras for n in lora.modules))


def _check_shapes(name: str, parts: list[dict]) -> None:
    shapes = {(p["up"].shape[0], *p["down"].shape[1:]) for p in parts}
    if len(shapes) > 1:
        raise ValueError(f"merge: module {name} has different layer shapes in the inputs {sorted(shapes)} (different base models?)")


def _facts(loras, ratios, block_ratios) -> dict:
    return {"sources": [source_facts(lora) for lora in loras], "ratios": ratios,
            "block_ratios": [b if b is None or isinstance(b, str) else list(b) for b in (block_ratios or [None] * len(loras))]}


def merge_concat(loras: list[LoRA], ratios=None, block_ratios=None, name: str = "merged") -> LoRA:
    ratios = _ratios(loras, ratios)
    mults = _block_multipliers(loras, block_ratios)
    modules = {}
    for n in _module_names(loras):
        ups, downs = [], []
        present = [lora.modules[n] for lora in loras if n in lora.modules]
        _check_shapes(n, present)
        for lora, ratio, mult in zip(loras, ratios, mults):
            if n not in lora.modules:
                continue
            parts = lora.modules[n]
            s = ratio * mult[n] * scale(parts)
            if s == 0:
                continue
            root = math.sqrt(abs(s))
            ups.append(parts["up"].float() * math.copysign(root, s))
            downs.append(parts["down"].float() * root)
        if ups:
            r = sum(d.shape[0] for d in downs)
            modules[n] = module(torch.cat(ups, 1), torch.cat(downs, 0), r)
    dim, alpha, args = network_rank_summary(modules)
    meta = network_metadata(loras, dim, alpha, args, family=loras[0].family)
    meta.update(tool_metadata("merge_concat", f"concatenation of {', '.join(f'{l.name} x{r:g}' for l, r in zip(loras, ratios))}",
                              method="concat", **_facts(loras, ratios, block_ratios)))
    return LoRA(name, modules, meta)


def merge_weighted(loras: list[LoRA], ratios=None, block_ratios=None, name: str = "merged") -> LoRA:
    ratios = _ratios(loras, ratios)
    for lora in loras:
        lora.require_kohya("weighted merge")
    mults = _block_multipliers(loras, block_ratios)
    modules = {}
    for n in _module_names(loras):
        present = [(lora, ratio, mult) for lora, ratio, mult in zip(loras, ratios, mults) if n in lora.modules]
        ranks = {rank(lora.modules[n]) for lora, _, _ in present}
        if len(ranks) > 1:
            raise ValueError(f"merge: weighted merge needs equal ranks; module {n} has ranks {sorted(ranks)} "
                             "(use concat or svd merge)")
        _check_shapes(n, [lora.modules[n] for lora, _, _ in present])
        base_alpha = float(present[0][0].modules[n].get("alpha", torch.tensor(float(next(iter(ranks))))))
        up = down = None
        for lora, ratio, mult in present:
            parts = lora.modules[n]
            alpha = float(parts.get("alpha", torch.tensor(float(rank(parts)))))
            s = math.sqrt(alpha / base_alpha) * ratio * mult[n]
            u, d = parts["up"].float() * abs(s), parts["down"].float() * s
            up, down = (u, d) if up is None else (up + u, down + d)
        modules[n] = module(up, down, base_alpha)
    dim, alpha, args = network_rank_summary(modules)
    meta = network_metadata(loras, dim, alpha, args, family=loras[0].family)
    meta.update(tool_metadata("merge_weighted", f"weighted merge of {', '.join(f'{l.name} x{r:g}' for l, r in zip(loras, ratios))}",
                              method="weighted", **_facts(loras, ratios, block_ratios)))
    return LoRA(name, modules, meta)


def weighted_delta(loras: list[LoRA], ratios: list[float], mults: list[dict[str, float]], name: str) -> torch.Tensor:
    total = None
    for lora, ratio, mult in zip(loras, ratios, mults):
        if name in lora.modules:
            d = lora.delta(name) * (ratio * mult[name])
            total = d if total is None else total + d
    return total


def merge_svd(loras: list[LoRA], ratios=None, new_rank: int = 4, new_conv_rank: int | None = None,
              block_ratios=None, clamp_quantile: float | None = 0.99, method: str = "exact",
              name: str = "merged") -> LoRA:
    ratios = _ratios(loras, ratios)
    mults = _block_multipliers(loras, block_ratios)
    new_conv_rank = new_rank if new_conv_rank is None else new_conv_rank
    modules = {}
    for n in _module_names(loras):
        _check_shapes(n, [lora.modules[n] for lora in loras if n in lora.modules])
        mat = weighted_delta(loras, ratios, mults, n)
        # sd-scripts caps the rank at the layer's channel counts (not the flattened 3x3 size)
        r = min(new_conv_rank if is_conv3x3(mat) else new_rank, mat.shape[0], mat.shape[1])
        up, down = factor(mat, r, method, clamp_quantile)
        modules[n] = module(up, down, up.shape[1])
    args = {"conv_dim": str(new_conv_rank), "conv_alpha": str(new_conv_rank)} if any(
        is_conv3x3(p["down"]) for p in modules.values()) else {}
    meta = network_metadata(loras, new_rank, new_rank, args, family=loras[0].family)
    meta.update(tool_metadata("merge_svd", f"SVD merge of {', '.join(f'{l.name} x{r:g}' for l, r in zip(loras, ratios))} "
                              f"to rank {new_rank} (conv {new_conv_rank})", method="svd", new_rank=new_rank,
                              new_conv_rank=new_conv_rank, clamp_quantile=clamp_quantile, svd=method,
                              **_facts(loras, ratios, block_ratios)))
    return LoRA(name, modules, meta)
