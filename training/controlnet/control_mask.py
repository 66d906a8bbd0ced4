"""A mask on a core ControlNet's output: every residual (zero conv and middle output) times the
mask resized to that residual's resolution (bilinear, as our LLLite apply resizes its mask), so
the control acts where the mask is 1, not where it is 0, and blends in between. Core 0.30's
ControlBase takes no mask; control_modes wraps get_control and calls mask_control on its output."""
import torch
import torch.nn.functional as F

from .network import ControlNetError


def mask_batch(mask: torch.Tensor) -> torch.Tensor:
    """ComfyUI's MASK ((H, W) or (B, H, W), 0..1) as (B, 1, H, W) float32 on the CPU."""
    if mask.ndim not in (2, 3):
        raise ControlNetError(f"a mask is (height, width) or (batch, height, width); got shape {tuple(mask.shape)}")
    return (mask if mask.ndim == 3 else mask[None]).detach().float().cpu()[:, None]


def mask_control(control: dict, mask: torch.Tensor, chunks: int) -> dict:
    """`control` ({"input"|"middle"|"output": [residual or None]}) with each residual multiplied by
    `mask` (from mask_batch) at its resolution. The residual batch is `chunks` (cond/uncond)
    repeats of the latent batch; the mask has a batch of 1 or one per latent."""
    fitted = {}

    def masked(c: torch.Tensor | None) -> torch.Tensor | None:
        if c is None:
            return None
        key = (c.shape[0], c.shape[-2], c.shape[-1], c.device, c.dtype)
        if key not in fitted:
            fitted[key] = _fit(mask, c.shape[0], c.shape[-2:], chunks).to(device=c.device, dtype=c.dtype)
        return c * fitted[key]

    return {k: [masked(c) for c in v] for k, v in control.items()}


def _fit(mask: torch.Tensor, batch: int, size, chunks: int) -> torch.Tensor:
    per_chunk = batch // max(chunks, 1)
    given = mask.shape[0]
    if given != 1 and (batch % max(chunks, 1) or given != per_chunk):
        raise ControlNetError(f"the ControlNet mask has a batch of {given}, the latent batch is {per_chunk}; give one "
                              f"mask for all, or one per latent")
    m = F.interpolate(mask, size=tuple(size), mode="bilinear", align_corners=False)
    return m if given == 1 else m.repeat(batch // given, 1, 1, 1)
