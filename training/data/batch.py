"""What the data side hands the training loop each step."""
from dataclasses import dataclass, field

import torch


@dataclass
class Batch:
    """One step's samples, all from one bucket (same latent size).

    latents: (B, 4, h, w) VAE latents already multiplied by the model's scale factor.
    captions: one caption per sample, after shuffle/keep_tokens/dropout.
    original_sizes / crop_top_left / target_sizes: (height, width) pixel pairs per sample,
        SDXL's size conditioning.
    guides: (B, 3, H, W) guide images in [-1, 1] at the image's pixel size (LLLite /
        ControlNet); resized, cropped and flipped exactly like their image. None otherwise.
    masks: (B, 1, h, w) loss masks in [0, 1] at the latent size (sd-scripts' masked loss: the
        per-pixel loss is multiplied by them), or None when no sample has one.
    is_reg: which samples are regularization images.
    offset, global_size: in a data-parallel run, these samples are [offset, offset + B) of a
        global batch of global_size (the step's noise is drawn for the whole global batch);
        global_size 0: the batch is the whole step.
    """

    latents: torch.Tensor
    captions: list[str]
    original_sizes: list[tuple[int, int]]
    crop_top_left: list[tuple[int, int]]
    target_sizes: list[tuple[int, int]]
    guides: torch.Tensor | None = None
    masks: torch.Tensor | None = None
    is_reg: list[bool] = field(default_factory=list)
    offset: int = 0
    global_size: int = 0
