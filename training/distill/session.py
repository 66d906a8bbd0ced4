"""A distillation run from ComfyUI objects: the LLLite run of training/session.py with the
ControlNet teacher as its target and the teacher agreement as its held-out evaluation."""
from collections.abc import Sequence
from pathlib import Path

import torch

from ..comfy_bridge import TrainingModel, trainable_family
from ..config import TrainConfig
from ..data.config import DatasetConfig
from ..engine import TrainHooks, TrainResult
from ..session import check_sample_guide, run_guided_training
from .adapter import DistillationAdapter
from .evaluate import TeacherAgreement
from .teacher import ControlNetTeacher


def distill_controlnet(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], teacher: ControlNetTeacher, *,
                       output_dir: str | Path, model_name: str = "", hooks: TrainHooks | None = None,
                       latent_cache_dir: str | Path | None = None, holdout: int = 2,
                       sample_guide: torch.Tensor | None = None) -> TrainResult:
    """Train a kohya ControlNet-LLLite (cfg.cond_emb_dim, network_dim, network_dropout,
    lllite_output_blocks, network_weights to start from an existing one) to predict what `model` guided by the
    teacher predicts, for the datasets' guide images and latents and their captions (the same
    text for teacher and student, no CFG). holdout: images kept out for the teacher
    agreement, measured at the start, every cfg.validate_every_n_steps and at the end."""
    from ...lllite.module import LAYOUTS

    family = trainable_family(model)
    if family not in LAYOUTS:
        raise ValueError(f"ControlNet-LLLite distillation supports SDXL and SD1.5 models; this one is {family}")
    check_sample_guide(cfg, sample_guide, "LLLite")

    def adapter(tm: TrainingModel) -> DistillationAdapter:
        return DistillationAdapter(tm, teacher, tm.family, cond_emb_dim=cfg.cond_emb_dim, network_dim=cfg.network_dim,
                                   dropout=cfg.network_dropout, network_weights=cfg.network_weights,
                                   checkpoint_embeddings=cfg.gradient_checkpointing, name=cfg.output_name,
                                   output_blocks=cfg.lllite_output_blocks)

    return run_guided_training(cfg, model, clip, vae, datasets, adapter, TeacherAgreement, holdout=holdout, size_multiple=32,
                               sample_guide=sample_guide, output_dir=output_dir, model_name=model_name, hooks=hooks,
                               latent_cache_dir=latent_cache_dir)
