"""A1111's ControlNet control modes on core's ControlNet objects (sd-webui-controlnet,
scripts/controlnet.py and scripts/hook.py):

- Balanced: every control output at the unit's weight (what core's apply does);
- "My prompt is more important" (soft_injection): output i of lllyasviel's list (zero convs in
  input-block order, the middle last) scaled by weight * 0.825 ** (12 - i), i = 0..12; SDXL's
  list (9 + middle) takes the first 10 of those scales, as A1111 does;
- "ControlNet is more important": soft_injection and cfg_injection: the same scales, and the
  control added to the conditional half of the batch only (the unconditional rows get none).
block_weights (A1111's advanced_weighting) replaces the mode's scales, one per output. An
optional mask limits the control to a region (control_mask).

with_control_mode returns a copy of a core ControlNet (comfy.controlnet.ControlNet or a
subclass such as ControlLora) whose get_control applies these on top of core's own output
(weight = core's strength); stacking with previous controls is core's sum.
"""
import comfy.controlnet
import torch

from .control_mask import mask_batch, mask_control
from .network import ControlNetError

BALANCED, PROMPT, CONTROL = "Balanced", "My prompt is more important", "ControlNet is more important"
MODES = (BALANCED, PROMPT, CONTROL)
SOFT_BASE = 0.825


def mode_scales(mode: str, count: int) -> list[float]:
    """Per-output factors on top of the weight, lllyasviel's order (count 13 for SD1.x, 10 for SDXL)."""
    if mode not in MODES:
        raise ControlNetError(f"control mode must be one of {', '.join(MODES)}; got {mode!r}")
    if mode == BALANCED:
        return [1.0] * count
    return [SOFT_BASE ** float(12 - i) for i in range(13)][:count]


def parse_block_weights(text: str) -> list[float] | None:
    """'1, 0.8, ...' -> floats; blank -> None."""
    parts = [p for p in text.replace(",", " ").split() if p]
    if not parts:
        return None
    try:
        return [float(p) for p in parts]
    except ValueError:
        raise ControlNetError(f"block weights must be numbers separated by commas, got {text!r}") from None


def with_control_mode(control, mode: str = BALANCED, block_weights: list[float] | None = None,
                      mask: torch.Tensor | None = None):
    """A copy of `control` applying the mode (or block_weights) and the optional MASK; Balanced
    without block weights or mask is `control` itself, so the result equals core's apply exactly."""
    if not isinstance(control, comfy.controlnet.ControlNet):
        raise TypeError(f"control modes apply to ControlNets; got {type(control).__name__} (T2I-Adapter or other)")
    mode_scales(mode, 13)  # validate the name early
    if mode == BALANCED and block_weights is None and mask is None:
        return control
    moded = control.copy()
    moded.__class__ = _moded_class(type(control))
    moded.control_mode, moded.block_weights = mode, block_weights
    moded.control_mask = None if mask is None else mask_batch(mask)
    return moded


_CLASSES: dict[type, type] = {}


def _moded_class(base: type) -> type:
    if base in _CLASSES:
        return _CLASSES[base]
    if getattr(base, "_is_moded", False):
        return base

    class Moded(base):
        _is_moded = True

        def copy(self):
            c = super().copy()
            c.__class__ = type(self)
            c.control_mode, c.block_weights, c.control_mask = self.control_mode, self.block_weights, self.control_mask
            return c

        def get_control(self, x_noisy, t, cond, batched_number, transformer_options):
            prev = None
            if self.previous_controlnet is not None:
                prev = self.previous_controlnet.get_control(x_noisy, t, cond, batched_number, transformer_options)
            with comfy.controlnet.ControlIsolation(self):
                own = super().get_control(x_noisy, t, cond, batched_number, transformer_options)
            if own is None:
                return prev
            if self.control_mode != BALANCED or self.block_weights is not None:
                own = shape_control(own, self.control_mode, self.block_weights, transformer_options.get("cond_or_uncond"))
            if self.control_mask is not None:
                own = mask_control(own, self.control_mask, batched_number)
            return own if prev is None else _add(own, prev)

    Moded.__name__ = f"Moded{base.__name__}"
    _CLASSES[base] = Moded
    return Moded


def shape_control(control: dict, mode: str, block_weights: list[float] | None, cond_or_uncond) -> dict:
    """Scales (mode or block weights) and, for ControlNet is more important, the unconditional
    rows zeroed. control: core's {"output": zero convs, "middle": [m]}."""
    outputs, middle = list(control.get("output", [])), list(control.get("middle", []))
    count = len(outputs) + len(middle)
    scales = block_weights if block_weights is not None else mode_scales(mode, count)
    if len(scales) != count:
        raise ControlNetError(f"this ControlNet has {count} outputs ({len(outputs)} input blocks + middle): give {count} block "
                         f"weights, got {len(scales)}")
    scaled = [None if c is None else c * s for c, s in zip(outputs + middle, scales)]
    if mode == CONTROL and cond_or_uncond:
        scaled = [None if c is None else c * _cond_rows(c, cond_or_uncond) for c in scaled]
    return {**control, "output": scaled[:len(outputs)], "middle": scaled[len(outputs):]}


def _cond_rows(c: torch.Tensor, cond_or_uncond) -> torch.Tensor:
    """1 on the rows of conditional chunks (cond_or_uncond 0), 0 on unconditional ones (1)."""
    per_chunk = c.shape[0] // len(cond_or_uncond)
    mark = torch.tensor([1.0 if k == 0 else 0.0 for k in cond_or_uncond], dtype=c.dtype, device=c.device)
    return mark.repeat_interleave(per_chunk)[:, None, None, None]


def _add(own: dict, prev: dict) -> dict:
    """Core's control_merge sum of this control and the previous ones."""
    out = {k: list(v) for k, v in own.items()}
    for key in ("input", "middle", "output"):
        o = out.setdefault(key, [])
        for i, p in enumerate(prev.get(key, [])):
            if i >= len(o):
                o.append(p)
            elif p is not None:
                o[i] = p if o[i] is None else p + o[i]
    return out
