"""What a LoRA file holds: its training metadata, dataset tags with counts, base-model hash,
and per module and per block (block_weights' labels: BASE = text encoders, INnn, MID, OUTnn)
the ranks, alphas and the Frobenius norm of the weight difference."""
import json

import torch

from .block_weights import block_label, block_order
from .common import LoRA, rank, scale


def delta_norm(parts: dict[str, torch.Tensor]) -> float:
    """||up @ down * alpha/rank||_F without forming the product:
    ||UD||_F^2 = sum((U^T U) * (D D^T)) over r x r matrices."""
    up = parts["up"].float().reshape(parts["up"].shape[0], -1)
    down = parts["down"].float().reshape(rank(parts), -1)
    sq = float(((up.T @ up) * (down @ down.T)).sum())
    return max(sq, 0.0) ** 0.5 * abs(scale(parts))


def _json(text: str | None):
    try:
        return json.loads(text) if text else None
    except json.JSONDecodeError:
        return None


def tag_counts(metadata: dict[str, str]) -> dict[str, int]:
    """ss_tag_frequency ({dataset: {tag: count}}) summed over datasets, most frequent first."""
    counts: dict[str, int] = {}
    freq = _json(metadata.get("ss_tag_frequency"))
    for tags in (freq or {}).values():
        if isinstance(tags, dict):
            for tag, n in tags.items():
                counts[tag.strip()] = counts.get(tag.strip(), 0) + int(n)
    return dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))


def inspect(lora: LoRA) -> dict:
    family = lora.family
    modules, blocks = {}, {}
    for n, parts in lora.modules.items():
        label = (block_label(n, family) if family else None) or ("BASE" if n.startswith("lora_te") else "OTHER")
        alpha = float(parts["alpha"]) if "alpha" in parts else float(rank(parts))
        norm = delta_norm(parts)
        modules[n] = {"block": label, "rank": rank(parts), "alpha": alpha, "norm": norm}
        b = blocks.setdefault(label, {"modules": 0, "ranks": set(), "alphas": set(), "norm_sq": 0.0})
        b["modules"] += 1
        b["ranks"].add(rank(parts))
        b["alphas"].add(alpha)
        b["norm_sq"] += norm ** 2
    meta = lora.metadata
    return {
        "family": family,
        "metadata": {k: meta[k] for k in sorted(meta) if k.startswith(("ss_", "modelspec.", "sshs_"))
                     and k not in ("ss_tag_frequency", "ss_dataset_dirs", "ss_datasets", "ss_bucket_info")},
        "tags": tag_counts(meta),
        "base_model_hash": {k: meta[k] for k in ("ss_sd_model_name", "ss_sd_model_hash", "ss_new_sd_model_hash") if k in meta},
        "modules": modules,
        "blocks": {label: {"modules": b["modules"], "ranks": sorted(b["ranks"]), "alphas": sorted(b["alphas"]),
                           "norm": b["norm_sq"] ** 0.5} for label, b in sorted(blocks.items(), key=lambda kv: block_order(kv[0]))},
    }
