"""Per-block ranks and learning-rate weights, numbered the way sd-scripts numbers U-Net blocks.

SD1.x: 25 blocks on the diffusers layout. 0 is a placeholder (no LoRA there), 1-12 are the
down blocks (`down_blocks_i_{resnets|attentions}_j` -> 1 + 3i + j, `downsamplers` -> 1 + 3i + 2),
12 is also the mid block, 13-24 the up blocks (13 + 3i + j). SDXL: 23 blocks on the ldm
layout: 0 time/label embedding, 1-9 `input_blocks_N`, 10-12 `middle_block_N`, 13-21
`output_blocks_N`, 22 `out`. block_dims / block_alphas / conv_block_dims take one value per
block; down/mid/up_lr_weight take 12/1/12 (SD1.x) or 9/3/9 (SDXL) values or a preset.
"""
import logging
import math
import re

_DOWN_UP = {"sd15": 12, "sdxl": 9}
_MID = {"sd15": 1, "sdxl": 3}
PRESETS = ("sine", "cosine", "linear", "reverse_linear", "zeros")
_SD15_UPDOWN = re.compile(r"(up|down)_blocks_(\d+)_(resnets|upsamplers|downsamplers|attentions)_(\d+)_")


def num_blocks(family: str) -> int:
    """25 on SD1.x, 23 on SDXL (the length of block_dims and of the lr-weight vector)."""
    return {"sd15": 25, "sdxl": 23}[family]


def block_index(lora_name: str, family: str) -> int:
    """Block number of a U-Net LoRA module name (kohya's numbering, see module doc)."""
    if family == "sd15":
        m = _SD15_UPDOWN.search(lora_name)
        if m:
            updown, i, kind, j = m.group(1), int(m.group(2)), m.group(3), int(m.group(4))
            idx = 3 * i + (2 if kind in ("upsamplers", "downsamplers") else j)
            return 1 + idx if updown == "down" else _DOWN_UP["sd15"] + 1 + idx
        if "mid_block_" in lora_name:
            return _DOWN_UP["sd15"]
    else:
        name = lora_name.removeprefix("lora_unet_")
        parts = name.split("_")
        if name.startswith(("time_embed_", "label_emb_")):
            return 0
        if name.startswith("input_blocks_"):
            return 1 + int(parts[2])
        if name.startswith("middle_block_"):
            return 10 + int(parts[2])
        if name.startswith("output_blocks_"):
            return 13 + int(parts[2])
        if name.startswith("out_"):
            return 22
    raise ValueError(f"LoRA module {lora_name!r} is in no {family} U-Net block")


def _floats(value, what: str) -> list[float]:
    if isinstance(value, str):
        try:
            return [float(s) if s.strip() else 0.0 for s in value.split(",")]
        except ValueError:
            raise ValueError(f"{what}: expected comma-separated numbers, got {value!r}") from None
    return [float(v) for v in value]


def _preset(spec: str, n: int, what: str) -> list[float]:
    """'sine', 'cosine+.25' ... -> n weights (shallow -> deep for down, deep -> shallow for up)."""
    name, _, offset = spec.partition("+")
    base = float(offset) if offset else 0.0
    ramp = [i / (n - 1) for i in range(n)]
    curves = {
        "sine": [math.sin(math.pi * r / 2) for r in ramp],
        "cosine": [math.sin(math.pi * r / 2) for r in reversed(ramp)],
        "linear": ramp,
        "reverse_linear": list(reversed(ramp)),
        "zeros": [0.0] * n,
    }
    if name not in curves:
        raise ValueError(f"{what}: unknown preset {name!r}; expected numbers or one of {', '.join(PRESETS)} (optionally '+offset')")
    return [w + base for w in curves[name]]


def _weights(value, n: int, what: str, presets: bool) -> list[float]:
    if value is None:
        return [1.0] * n
    if isinstance(value, (int, float)):
        value = [value]
    if presets and isinstance(value, str) and value.strip()[:1].isalpha():
        return _preset(value.strip(), n, what)
    weights = _floats(value, what)
    if len(weights) > n:
        raise ValueError(f"{what}: {len(weights)} values given, this model has {n} blocks there")
    if len(weights) < n:
        # sd-scripts fills the missing blocks with 1.0; keep configs written for it working.
        logging.warning("%s: %d of %d values given, the rest are 1.0", what, len(weights), n)
        weights += [1.0] * (n - len(weights))
    return weights


def block_lr_weights(family: str, down=None, mid=None, up=None, zero_threshold: float = 0.0) -> list[float] | None:
    """One learning-rate multiplier per block, or None when no lr weight is set.

    Weights not above zero_threshold become 0: those blocks get no LoRA module at all."""
    if down is None and mid is None and up is None:
        return None
    n, n_mid = _DOWN_UP[family], _MID[family]
    down_w = _weights(down, n, "down_lr_weight", presets=True)
    mid_w = _weights(mid, n_mid, "mid_lr_weight", presets=False)
    up_w = _weights(up, n, "up_lr_weight", presets=True)
    weights = [w if w > zero_threshold else 0.0 for w in down_w + mid_w + up_w]
    if family == "sdxl":
        weights = [1.0] + weights + [1.0]  # embeddings and out: never targeted, kept for numbering
    return weights


def _per_block(value, family: str, what: str, cast) -> list:
    values = [cast(v) for v in (value.split(",") if isinstance(value, str) else value)]
    if len(values) != num_blocks(family):
        raise ValueError(f"{what}: {num_blocks(family)} values expected on {family}, got {len(values)}")
    return values


def block_ranks(family: str, dim: int, alpha: float, conv_dim: int | None, conv_alpha: float | None,
                block_dims=None, block_alphas=None, conv_block_dims=None, conv_block_alphas=None,
                lr_weights: list[float] | None = None):
    """Per-block (dims, alphas, conv_dims, conv_alphas) lists, or None when every block uses
    dim/alpha and conv_dim/conv_alpha. conv_dims is None when 3x3 convs get no LoRA. Blocks
    whose lr weight is 0 get rank 0 (no module)."""
    if block_dims is None and lr_weights is None:
        return None
    dims = _per_block(block_dims, family, "block_dims", int) if block_dims is not None else [dim] * num_blocks(family)
    alphas = _per_block(block_alphas, family, "block_alphas", float) if block_alphas is not None else [alpha] * num_blocks(family)
    if conv_block_dims is not None:
        conv_dims = _per_block(conv_block_dims, family, "conv_block_dims", int)
        default_conv_alpha = 1.0 if conv_alpha is None else conv_alpha
        conv_alphas = (_per_block(conv_block_alphas, family, "conv_block_alphas", float)
                       if conv_block_alphas is not None else [default_conv_alpha] * num_blocks(family))
    elif conv_dim is not None:
        conv_dims = [conv_dim] * num_blocks(family)
        conv_alphas = [1.0 if conv_alpha is None else conv_alpha] * num_blocks(family)
    else:
        conv_dims = conv_alphas = None
    if lr_weights is not None:
        for i, w in enumerate(lr_weights):
            if w == 0:
                dims[i] = 0
                if conv_dims is not None:
                    conv_dims[i] = 0
    return dims, alphas, conv_dims, conv_alphas
