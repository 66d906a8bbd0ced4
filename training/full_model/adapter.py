"""The whole model as a TrainableAdapter (training/adapter.py): DreamBooth / fine-tuning trains
the U-Net's own weights (and optionally the text encoders'), in place, and saves a single-file
checkpoint in ComfyUI's layout. The caller keeps the shared model's original weights
(full_model.train.kept_weights) since the graph's MODEL and CLIP must not change."""
import torch

from .. import fsdp
from ..data.batch import Batch
from ..distributed import current
from .blocks import sdxl_block_index
from .checkpoint import ARCHITECTURE, V_ARCHITECTURE, checkpoint_state_dict, save_checkpoint_file


class FullModelAdapter:
    kind = "full_model"

    def __init__(self, patcher, clip, vae, family: str, train_text_encoder: bool = False,
                 text_encoder_lrs: dict[str, float | None] | None = None, block_lr: list[float] | None = None,
                 shard: bool = False):
        """patcher: the training ModelPatcher (TrainingModel.patcher); clip, vae: what goes into the
        checkpoint beside it. text_encoder_lrs: a learning rate per encoder role ("te1", "te2"
        on SDXL; "te"), None = text_encoder_lr. block_lr: SDXL's 23 per-block rates (blocks.py).
        shard: the U-Net sharded with FSDP over the torchrun job's processes (training/fsdp.py)."""
        self.patcher, self.clip, self.vae, self.family = patcher, clip, vae, family
        self.trains_text_encoders = train_text_encoder
        self.text_encoder_lrs = dict(text_encoder_lrs or {})
        self.block_lr = block_lr
        self.parts: dict[str, torch.nn.Module] = {}  # "unet", "te1", "te2", "te" -> module
        self.shard, self.sharding = shard, None

    def attach(self, diffusion_model: torch.nn.Module, text_encoders: dict[str, torch.nn.Module]) -> None:
        self.parts = {"unet": diffusion_model, **text_encoders}
        self.sharding = fsdp.shard(diffusion_model, current()) if self.shard else None

    def detach(self) -> None:
        if self.sharding is not None:  # the trained weights whole again on every rank
            self.sharding.release()
            self.sharding = None
        for module in self.parts.values():
            module.requires_grad_(False)

    def _unet_groups(self, unet_lr: float) -> list[dict]:
        named = list(self.parts["unet"].named_parameters())
        if self.block_lr is None:
            return [{"params": [p for _, p in named], "lr": unet_lr, "name": "unet"}]
        blocks: dict[int, list] = {}
        for name, p in named:
            blocks.setdefault(sdxl_block_index(name), []).append(p)
        return [{"params": blocks[i], "lr": self.block_lr[i], "name": f"unet_block{i}"} for i in sorted(blocks)]

    def param_groups(self, unet_lr: float, text_encoder_lr: float | None) -> list[dict]:
        """The U-Net (one group, or one per SDXL block with block_lr) and each trained text
        encoder with its own rate; a rate of 0 freezes its part (no gradient kept)."""
        groups = self._unet_groups(unet_lr)
        for role in (r for r in self.parts if r != "unet"):
            lr = self.text_encoder_lrs.get(role)
            lr = lr if lr is not None else (text_encoder_lr if text_encoder_lr is not None else unet_lr)
            groups.append({"params": list(self.parts[role].parameters()), "lr": lr, "name": role})
        kept = [g for g in groups if g["lr"]]
        for g in groups:
            for p in g["params"]:
                p.requires_grad_(bool(g["lr"]))
        return kept

    def set_batch(self, batch: Batch) -> None:
        pass

    def train(self, mode: bool = True) -> None:
        """The U-Net stays in eval mode, as sd-scripts trains it (it has no dropout in SD/SDXL)."""

    def state_dict(self) -> dict[str, torch.Tensor]:
        """Every trained weight by part, for the resumable state."""
        return {f"{part}.{k}": p.detach() for part, m in self.parts.items() for k, p in m.named_parameters()}

    def load_state_dict(self, sd: dict[str, torch.Tensor]) -> None:
        own = dict((f"{part}.{k}", p) for part, m in self.parts.items() for k, p in m.named_parameters())
        missing, unexpected = sorted(set(own) - set(sd)), sorted(set(sd) - set(own))
        if missing or unexpected:
            raise ValueError(f"full-model state does not fit this model: missing {missing[:3]}, unexpected {unexpected[:3]}")
        with torch.no_grad():
            for k, p in own.items():
                p.copy_(sd[k].to(p.dtype))

    def metadata(self) -> dict[str, str]:
        v_prediction = getattr(self.patcher.model.model_type, "name", "") == "V_PREDICTION"
        return {"modelspec.architecture": (V_ARCHITECTURE.get(self.family) if v_prediction else None) or ARCHITECTURE[self.family]}

    def save(self, path: str, dtype: torch.dtype, metadata: dict[str, str]) -> None:
        sd = checkpoint_state_dict(self.patcher, self.clip, self.vae)
        save_checkpoint_file(path, sd, dtype, {**metadata, **self.metadata()})
