"""The one interface between the training loop and what it trains (LoRA, LLLite, later ControlNet).

The loop never knows which adapter it trains: it attaches it to the frozen model, asks for
optimizer parameter groups, hands it each batch (so an adapter that needs more than latents
and text, such as LLLite's guide images, can take it), and asks it to save itself in its
public file format. Below it, what guided adapters share (GuidedAdapter, batch_guides, load_exact).
"""
from contextlib import contextmanager
from typing import Protocol

import torch

from .data.batch import Batch


class TrainableAdapter(Protocol):
    kind: str  # "lora", "lllite" ... also written into metadata
    trains_text_encoders: bool  # when True the loop cannot cache text-encoder outputs

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        """Insert the trainable modules into the (frozen) model; text_encoders maps
        "te1"/"te2" (SDXL) or "te" (SD1.5) to the encoder modules."""

    def detach(self) -> None:
        """Remove everything attach() inserted; the model is as before."""

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        """torch.optim parameter groups, each with its own "lr" (block weights applied)."""

    def set_batch(self, batch: Batch) -> None:
        """Per-step inputs beyond latents and text (guide images); no-op for LoRA."""

    def train(self, mode: bool = True) -> None:
        """Dropout and other train-only behaviour on/off."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Weights under the public format's key names (kohya)."""

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        """Start from / resume to weights in the public format."""

    def metadata(self) -> dict[str, str]:
        """Format-specific safetensors metadata (ss_network_* for LoRA, modelspec for LLLite)."""

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        """Write the public-format file atomically, metadata merged with self.metadata()."""


class GuidedAdapter:
    """An adapter steered by guide images (`_guides`, (G, 3, H, W) in [-1, 1]): the batch's, set
    by set_batch, or a sample image's (using_guide)."""

    _guides: torch.Tensor | None = None

    @contextmanager
    def using_guide(self, guide: torch.Tensor):
        """Within the block, model calls use `guide`; the batch's guides come back afterwards.
        For sample images."""
        before = self._guides
        self._guides = guide
        try:
            yield
        finally:
            self._guides = before


def batch_guides(batch: Batch, what: str, sources: str = "conditioning_data_dir or in-graph guide images",
                 error: type[Exception] = ValueError) -> torch.Tensor:
    """The batch's guide images for a guided adapter's set_batch: one per latent, else `error`
    naming `what` is trained and where guides come from (`sources`)."""
    if batch.guides is None:
        raise error(f"{what} training needs guide images in every batch ({sources})")
    if batch.guides.shape[0] != batch.latents.shape[0]:
        raise error(f"the batch has {batch.latents.shape[0]} latents but {batch.guides.shape[0]} guide images")
    return batch.guides


def load_exact(own: dict[str, torch.Tensor], sd: dict[str, torch.Tensor], what: str,
               error: type[Exception] = ValueError) -> None:
    """Copy `sd` into `own` (a module's state_dict(): its live tensors) when both have the same
    keys and shapes; else `error` "<what>: missing .., unexpected .., other shapes ..", nothing copied."""
    missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
    wrong = sorted(k for k in set(own) & set(sd) if tuple(own[k].shape) != tuple(sd[k].shape))
    if missing or unexpected or wrong:
        raise error(f"{what}: missing {missing[:3]}, unexpected {unexpected[:3]}, other shapes {wrong[:3]}")
    with torch.no_grad():
        for k, v in own.items():
            v.copy_(sd[k])
