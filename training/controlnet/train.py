"""One ControlNet training run: run_training (the one engine) with the ControlNet adapter, the
data side's guide pairing and the control gap on held-out images, as train_lllite does."""
from collections.abc import Sequence
from pathlib import Path

import torch

from ..comfy_bridge import TrainingModel, trainable_family
from ..config import TrainConfig
from ..control_gap import ControlGap
from ..data.config import DatasetConfig
from ..engine import TrainHooks, TrainResult
from ..session import check_sample_guide, run_guided_training
from .adapter import ControlNetAdapter
from .layouts import AUTO
from .network import ControlNetError

FAMILIES = ("sd15", "sdxl")


def train_controlnet(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], *, output_dir: str | Path,
                     model_name: str = "", hooks: TrainHooks | None = None, latent_cache_dir: str | Path | None = None,
                     holdout: int = 4, sample_guide: torch.Tensor | None = None, control_weights: str | None = None,
                     sd_locked: bool = True, only_mid_control: bool = False, control_strength: float = 1.0,
                     guide_dropout: float = 0.0, file_layout: str = AUTO) -> TrainResult:
    """Train a ControlNet (lllyasviel's layout) on datasets with guide images; files land in
    output_dir as <output_name>.safetensors (+ step saves, states; with sd_locked=False also
    <output_name>_unet.safetensors). control_weights: a ControlNet file to continue from,
    else one made from the base U-Net. holdout: held-out images for the control gap (0: off).
    file_layout: layouts.LAYOUTS ("auto": sd-scripts' for SDXL models core reads it for, else lllyasviel's)."""
    family = trainable_family(model)
    if family not in FAMILIES:
        raise ControlNetError(f"ControlNet training supports SD1.5 and SDXL models; this one is {family}")
    check_sample_guide(cfg, sample_guide, "ControlNet", ControlNetError)
    unet_config = dict(model.model.model_config.unet_config)

    def adapter(tm: TrainingModel) -> ControlNetAdapter:
        return ControlNetAdapter(unet_config, tm.family, control_weights, sd_locked, only_mid_control, control_strength,
                                 guide_dropout, gradient_checkpointing=cfg.gradient_checkpointing, file_layout=file_layout)

    return run_guided_training(cfg, model, clip, vae, datasets, adapter, ControlGap, holdout=holdout, size_multiple=64,
                               sample_guide=sample_guide, output_dir=output_dir, model_name=model_name, hooks=hooks,
                               latent_cache_dir=latent_cache_dir)
