"""Inpainting masks for Anima LLLite training, drawn per sample from the run's generator.

The sd-scripts release read for this (2026-02-16) has no Anima LLLite trainer, so this is our
rule, in the spirit of the usual inpainting recipes: each mask is one axis-aligned rectangle
covering 10-60 % of each side, placed uniformly; one sample in `empty_rate` gets no mask at all
(the guide image is then kept whole), so the LLLite also learns the "nothing to repaint" case
that core's AnimaLLLiteApply feeds when no mask is connected.
"""
import torch


def random_masks(n: int, height: int, width: int, generator: torch.Generator, empty_rate: float = 0.1) -> torch.Tensor:
    """(n, 1, height, width) in {0, 1}; 1 = the region to repaint."""
    masks = torch.zeros(n, 1, height, width)
    for i in range(n):
        draw = torch.rand(5, generator=generator).tolist()
        if draw[0] < empty_rate:
            continue
        mh, mw = max(1, round(height * (0.1 + 0.5 * draw[1]))), max(1, round(width * (0.1 + 0.5 * draw[2])))
        top, left = int(draw[3] * (height - mh + 1)), int(draw[4] * (width - mw + 1))
        masks[i, :, top:top + mh, left:left + mw] = 1.0
    return masks
