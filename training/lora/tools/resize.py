"""Resize a LoRA's rank, as sd-scripts' networks/resize_lora.py does.

Each module's up @ down is re-factorized by SVD and truncated: to new_rank (3x3 convs to
new_conv_rank), or to a rank a dynamic criterion picks, capped at new_rank:
  sv_ratio p:      keep singular values > S[0] / p
  sv_fro p:        smallest k whose sum(S[:k]^2) / sum(S^2) reaches p^2 (Frobenius norm retained >= p)
  sv_cumulative p: smallest k whose sum(S[:k]) / sum(S) reaches p
(each criterion's index is clamped to [1, len(S) - 1] and then + 1, exactly as sd-scripts
computes it). alpha becomes old_alpha / old_rank * new_rank, so the scale is unchanged.
The SVD runs on the r x r core of the QR factors of up and down: exact and cheap. A module
never gets more than its old rank (the singular values beyond it are zero).
"""
from dataclasses import dataclass

import torch

from .block_weights import block_label, block_order
from .common import LoRA, is_conv3x3, module, network_metadata, network_rank_summary, rank, scale, source_facts, tool_metadata

MIN_SV = 1e-6
DYNAMIC_METHODS = ("sv_ratio", "sv_fro", "sv_cumulative")


@dataclass(frozen=True)
class ModuleReport:
    name: str
    old_rank: int
    new_rank: int
    new_alpha: float
    fro_retained: float  # ||kept||_F / ||difference||_F
    sum_retained: float  # sum of kept singular values / sum of all
    max_ratio: float  # S[0] / S[new_rank - 1]


def _index(S: torch.Tensor, method: str, param: float) -> int:
    if method == "sv_ratio":
        index = int(torch.sum(S > S[0] / param))
    elif method == "sv_cumulative":
        index = int(torch.searchsorted(torch.cumsum(S, 0) / S.sum(), torch.tensor(param, dtype=S.dtype))) + 1
    else:  # sv_fro
        sq = S.pow(2)
        index = int(torch.searchsorted(torch.cumsum(sq, 0) / sq.sum(), torch.tensor(param ** 2, dtype=S.dtype))) + 1
    return max(1, min(index, len(S) - 1))


def pick_rank(S: torch.Tensor, max_rank: int, dynamic_method: str | None, dynamic_param: float | None) -> int:
    """The rank sd-scripts' rank_resize keeps for singular values S (all of the matrix's,
    zeros included) under a cap of max_rank."""
    new_rank = max_rank if dynamic_method is None else _index(S, dynamic_method, dynamic_param) + 1
    if S[0] <= MIN_SV:
        return 1
    return min(new_rank, max_rank)


def _svd_of_product(up: torch.Tensor, down: torch.Tensor):
    """(U, S, Vh) of up @ down (out x r, r x in) through QR: only an r x r SVD."""
    qu, ru = torch.linalg.qr(up)
    qd, rd = torch.linalg.qr(down.T)
    u, s, vh = torch.linalg.svd(ru @ rd.T)
    return qu @ u, s, vh @ qd.T


def resize(lora: LoRA, new_rank: int, new_conv_rank: int | None = None, dynamic_method: str | None = None,
           dynamic_param: float | None = None, name: str | None = None) -> tuple[LoRA, list[ModuleReport]]:
    if dynamic_method is not None and dynamic_method not in DYNAMIC_METHODS:
        raise ValueError(f"resize: dynamic_method must be one of {DYNAMIC_METHODS} or None, got {dynamic_method!r}")
    if dynamic_method is not None and not dynamic_param:
        raise ValueError(f"resize: {dynamic_method} needs dynamic_param")
    if new_rank < 1 or (new_conv_rank is not None and new_conv_rank < 1):
        raise ValueError("resize: ranks must be at least 1")
    new_conv_rank = new_rank if new_conv_rank is None else new_conv_rank
    modules, reports = {}, []
    for n, parts in lora.modules.items():
        down, up = parts["down"].float(), parts["up"].float()
        old = rank(parts)
        out = up.shape[0]
        U, S, Vh = _svd_of_product(up.reshape(out, old), down.reshape(old, -1))
        full = torch.zeros(min(out, down[0].numel()))
        full[: len(S)] = S  # the matrix's singular values beyond the old rank are zero
        cap = min(new_conv_rank if is_conv3x3(down) else new_rank, old)
        k = pick_rank(full, cap, dynamic_method, dynamic_param)
        s_scale = scale(parts)
        new_up = (U[:, :k] * S[:k]).reshape(out, k, *up.shape[2:])
        new_down = Vh[:k].reshape(k, *down.shape[1:])
        modules[n] = module(new_up.contiguous(), new_down.contiguous(), s_scale * k)
        fro = float(S[:k].pow(2).sum().sqrt() / S.pow(2).sum().sqrt()) if S[0] > 0 else 1.0
        reports.append(ModuleReport(n, old, k, s_scale * k, fro,
                                    float(S[:k].abs().sum() / S.abs().sum()) if S[0] > 0 else 1.0,
                                    float(S[0] / S[k - 1]) if S[k - 1] > 0 else float("inf")))
    old_dim = max(rank(p) for p in lora.modules.values())
    dim, alpha, args = network_rank_summary(modules)
    meta = dict(lora.metadata)
    meta.update(network_metadata([lora], dim, alpha, args, family=lora.family))
    comment = lora.metadata.get("ss_training_comment", "")
    if dynamic_method is None:
        conv = "" if new_conv_rank == new_rank else f" (conv: {new_conv_rank})"
        what = f"dimension is resized from {old_dim} to {new_rank}{conv}; {comment}"
    else:
        what = f"Dynamic resize with {dynamic_method}: {dynamic_param} from {old_dim}; {comment}"
    meta.update(tool_metadata("resize", what, source=source_facts(lora), new_rank=new_rank, new_conv_rank=new_conv_rank,
                              dynamic_method=dynamic_method, dynamic_param=dynamic_param,
                              mean_fro_retained=sum(r.fro_retained for r in reports) / len(reports)))
    meta["ss_training_comment"] = what
    return LoRA(name or f"{lora.name}_resized", modules, meta), reports


def report_text(reports: list[ModuleReport], old_bytes: int | None = None, new_bytes: int | None = None,
                per_module: bool = True) -> str:
    """sd-scripts' --verbose report: one line per module (unless per_module is False), the mean
    Frobenius retention, and the file-size change when the sizes are given."""
    lines = [] if not per_module else [f"{r.name:75} | sum(S) retained: {r.sum_retained:.1%}, fro retained: {r.fro_retained:.1%}, "
             f"max(S) ratio: {r.max_ratio:0.1f} | rank {r.old_rank} -> {r.new_rank}, alpha {r.new_alpha:g}" for r in reports]
    fro = torch.tensor([r.fro_retained for r in reports])
    lines.append(f"Average Frobenius norm retention: {float(fro.mean()):.2%} | std: {float(fro.std(unbiased=False)):0.3f}")
    if old_bytes is not None and new_bytes is not None:
        lines.append(f"File size: {old_bytes / 2**20:.2f} MiB -> {new_bytes / 2**20:.2f} MiB ({new_bytes / old_bytes:.1%})")
    return "\n".join(lines)


def rank_per_block(reports: list[ModuleReport], family: str | None) -> dict[str, float]:
    """Block label (BASE, INnn, MID, OUTnn, OTHER) -> mean rank its modules kept, in block order."""
    kept: dict[str, list[int]] = {}
    for r in reports:
        label = (block_label(r.name, family) if family else None) or ("BASE" if r.name.startswith("lora_te") else "OTHER")
        kept.setdefault(label, []).append(r.new_rank)
    return {label: sum(v) / len(v) for label, v in sorted(kept.items(), key=lambda kv: block_order(kv[0]))}
