"""In-graph datasets: image tensors, captions and optional guide images and loss masks handed
over by a workflow (e.g. KSampler outputs and their preprocessed maps), so a graph can synthesise its
own training set.

    items = items_from_tensors(images_bchw, ["a red circle", ...], guides=maps_bchw)
    subset = SubsetConfig(items=items, num_repeats=1)

Images are (B, 3, H, W) tensors in [0, 1] (or a list of them when sizes differ); nodes
convert ComfyUI's IMAGE with nodes/common.image_to_bchw.
"""
from collections.abc import Sequence

import torch

from .errors import DatasetError
from .images import ImageItem
from .pairing import GUIDES, MASKS, check_sizes


def items_from_tensors(
    images: torch.Tensor | Sequence[torch.Tensor],
    captions: str | Sequence[str],
    guides: torch.Tensor | Sequence[torch.Tensor] | None = None,
    masks: torch.Tensor | Sequence[torch.Tensor] | None = None,
) -> list[ImageItem]:
    """One ImageItem per image. captions: one string for all images, or one per image;
    guides: one per image, each with its image's pixel size; masks: loss masks (ComfyUI's
    MASK, (B, H, W) in [0, 1]), one per image, each with its image's pixel size."""
    pictures = _flatten(images, "images")
    if not pictures:
        raise DatasetError("The in-graph image list is empty.")
    if isinstance(captions, str):
        texts = [captions] * len(pictures)
    else:
        texts = list(captions)
        if len(texts) == 1:
            texts *= len(pictures)
        if len(texts) != len(pictures):
            raise DatasetError(f"Got {len(pictures)} images but {len(texts)} captions: give one caption per image, or one for all.")
    guide_list = _flatten(guides, "guides") if guides is not None else [None] * len(pictures)
    if len(guide_list) != len(pictures):
        raise DatasetError(f"Got {len(pictures)} images but {len(guide_list)} guide images: give one guide image per image.")
    mask_list = _flatten_masks(masks) if masks is not None else [None] * len(pictures)
    if len(mask_list) != len(pictures):
        raise DatasetError(f"Got {len(pictures)} images but {len(mask_list)} masks: give one mask per image.")
    items = [
        ImageItem(name=f"images[{i}]", source=img, size=(img.shape[-1], img.shape[-2]), caption=text, guide=guide, mask=mask)
        for i, (img, text, guide, mask) in enumerate(zip(pictures, texts, guide_list, mask_list))
    ]
    check_sizes(GUIDES, items)
    check_sizes(MASKS, items)
    return items


def _flatten_masks(tensors) -> list[torch.Tensor]:
    """(1, H, W) CPU float masks from (B, H, W) / (B, 1, H, W) batches or single (H, W) masks."""
    parts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    out = []
    for i, t in enumerate(parts):
        batch = t.unsqueeze(0) if t.dim() == 2 else t
        batch = batch.unsqueeze(1) if batch.dim() == 3 else batch
        if batch.dim() != 4 or batch.shape[1] != 1:
            raise DatasetError(f"masks[{i}] has shape {tuple(t.shape)}; expected (B, H, W) or (H, W) masks in [0, 1].")
        out.extend(batch.detach().to("cpu", torch.float32).clamp(0, 1).unbind(0))
    return out


def _flatten(tensors, what: str) -> list[torch.Tensor]:
    """(3, H, W) CPU float tensors from a batch tensor or a list of batches/single images."""
    parts = [tensors] if isinstance(tensors, torch.Tensor) else list(tensors)
    out = []
    for i, t in enumerate(parts):
        batch = t.unsqueeze(0) if t.dim() == 3 else t
        if batch.dim() != 4 or batch.shape[1] != 3:
            raise DatasetError(f"{what}[{i}] has shape {tuple(t.shape)}; expected (B, 3, H, W) or (3, H, W) RGB in [0, 1].")
        t = batch
        out.extend(t.detach().to("cpu", torch.float32).unbind(0))
    return out
