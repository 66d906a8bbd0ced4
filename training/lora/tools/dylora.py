"""Cut a trained DyLoRA file to a smaller rank, as sd-scripts' extract_lora_from_dylora.py:
the first `rank` rows of every lora_down and columns of every lora_up, alpha unchanged
(DyLoRA trains each rank b with scale alpha / b, which is what the cut file computes).
Modules whose rank is already at most `rank` are kept whole."""
import json

from .common import LoRA, rank as rank_of, source_facts, tool_metadata


def unit_of(lora: LoRA) -> int | None:
    """The DyLoRA unit from ss_network_args, None when the file does not say."""
    try:
        args = json.loads(lora.metadata.get("ss_network_args", "{}") or "{}")
    except json.JSONDecodeError:
        return None
    unit = args.get("unit") if isinstance(args, dict) else None
    return int(unit) if unit not in (None, "", "None") else None


def cut(lora: LoRA, rank: int, unit: int | None = None, name: str | None = None) -> LoRA:
    lora.require_kohya("DyLoRA cut")
    unit = unit or unit_of(lora)
    max_rank = max(rank_of(p) for p in lora.modules.values())
    if unit is None:
        raise ValueError(f"{lora.name}: no DyLoRA unit in its metadata (ss_network_args); give the unit")
    if rank < 1 or rank % unit:
        raise ValueError(f"DyLoRA cut: rank {rank} is not a positive multiple of the unit {unit}")
    if rank > max_rank:
        raise ValueError(f"DyLoRA cut: rank {rank} is above the file's rank {max_rank}")
    modules = {n: {**p, "down": p["down"][:rank].contiguous(), "up": p["up"][:, :rank].contiguous()}
               for n, p in lora.modules.items()}
    meta = dict(lora.metadata)
    try:
        args = json.loads(meta.get("ss_network_args", "{}") or "{}")
    except json.JSONDecodeError:
        args = {}
    args.pop("unit", None)
    comment = meta.get("ss_training_comment", "")
    meta.update({"ss_network_module": "networks.lora", "ss_network_dim": str(rank), "ss_network_args": json.dumps(args)})
    meta.update(tool_metadata("dylora_cut", f"split from DyLoRA, rank {max_rank} to {rank}; {comment}",
                              source=source_facts(lora), unit=unit, from_rank=max_rank, rank=rank))
    return LoRA(name or f"{lora.name}-{rank:04d}", modules, meta)
