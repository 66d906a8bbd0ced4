"""One DreamBooth / fine-tuning run (sd-scripts' train_db.py, fine_tune.py, sdxl_train.py) on the
one engine: the U-Net (and optionally the text encoders) trained in place, each save a
single-file checkpoint; the graph's MODEL and CLIP get their original weights back afterwards."""
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from ..comfy_bridge import text_encoder_modules, trainable_family
from ..config import TrainConfig
from ..data.config import DatasetConfig
from ..engine import TrainHooks, TrainResult
from ..fsdp import problems as fsdp_problems
from ..lora.file import training_metadata
from ..lora.tools.extract import extract, model_weights
from ..session import run_training
from .adapter import FullModelAdapter
from .blocks import parse_block_lr
from .checkpoint import ARCHITECTURE


@dataclass
class FullModelOptions:
    """sd-scripts' --train_text_encoder, --learning_rate_te (SD1.x) / --learning_rate_te1,
    --learning_rate_te2 (SDXL), --block_lr (SDXL)."""

    train_text_encoder: bool = False
    learning_rate_te1: float | None = None  # SD1.x: the text encoder's rate
    learning_rate_te2: float | None = None  # SDXL's CLIP-G
    block_lr: list[float] | str | None = None
    save_lora_dim: int = 0  # > 0: also save the difference to the base as a LoRA of this rank (LoRA tools' extract)
    fsdp: bool = False  # under torchrun: the U-Net sharded across the processes (training/fsdp.py)

    def __post_init__(self):
        self.block_lr = parse_block_lr(self.block_lr)


@contextmanager
def kept_weights(*modules: torch.nn.Module) -> Iterator[None]:
    """The modules' parameters as they are now, put back on exit (training changes the shared
    MODEL / CLIP in place; the graph's other nodes and the next run must see the originals).
    The copy waits in CPU memory."""
    with torch.inference_mode(False):
        saved = [{k: p.detach().to("cpu", copy=True) for k, p in m.named_parameters()} for m in modules]
    try:
        yield
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for m, values in zip(modules, saved):
                for k, p in m.named_parameters():
                    p.data = values[k].to(p.device)
                    p.requires_grad_(False)


def _refuse(cfg: TrainConfig, family: str, options: FullModelOptions) -> None:
    problems = []
    if family not in ARCHITECTURE:
        problems.append(f"full-model training supports SD1.x, SD2.x and SDXL models; this one is {family}")
    if cfg.fp8:
        problems.append("fp8_base stores the frozen U-Net in 8 bits; a full fine-tune trains those weights: remove it")
    if options.block_lr is not None and family != "sdxl":
        problems.append("block_lr is SDXL's (23 blocks); this model is not SDXL")
    if options.learning_rate_te2 is not None and family != "sdxl":
        problems.append("learning_rate_te2 is for SDXL's second text encoder")
    if cfg.full_bf16 and cfg.sample_prompts and (cfg.sample_every_n_steps or cfg.sample_every_n_epochs):
        problems.append("full_bf16 with sample images is not implemented for full-model training: ComfyUI's sampler "
                        "runs the model in its own dtype, not bf16 weights. Sample from the saved checkpoint instead")
    if options.save_lora_dim and family == "sd2":
        problems.append("save_lora_dim: the LoRA tools have no SD2.x layer names; extract from the saved checkpoint elsewhere")
    if options.save_lora_dim < 0:
        problems.append("save_lora_dim must be >= 0")
    if options.fsdp:
        problems += fsdp_problems(cfg, options.train_text_encoder)
    if problems:
        raise ValueError("These options cannot train as expected:\n" + "\n".join(f"- {p}" for p in problems))


def train_full_model(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], options: FullModelOptions,
                     *, output_dir: str | Path, model_name: str = "", hooks: TrainHooks | None = None,
                     latent_cache_dir: str | Path | None = None, lora_dir: str | Path | None = None) -> TrainResult:
    """Train the whole U-Net (and the text encoders with options.train_text_encoder); files land
    in output_dir (the checkpoints folder) as <output_name>.safetensors and the step/epoch saves,
    each a checkpoint CheckpointLoaderSimple loads. DreamBooth: a folder tree with regularization
    images and cfg.prior_loss_weight; fine-tuning: captions or a metadata JSON in the dataset TOML.
    options.save_lora_dim: the difference to the base also as <output_name>_lora.safetensors in
    lora_dir (default output_dir), appended to the result's saved files."""
    family = trainable_family(model)
    _refuse(cfg, family, options)
    te_lrs = ({"te1": options.learning_rate_te1, "te2": options.learning_rate_te2} if family == "sdxl"
              else {"te": options.learning_rate_te1})

    made = []

    def adapter(tm) -> FullModelAdapter:
        made.append(FullModelAdapter(tm.patcher, clip, vae, family, options.train_text_encoder, te_lrs, options.block_lr,
                                     options.fsdp))
        return made[-1]

    def metadata(facts: dict) -> dict[str, str]:
        return {**training_metadata(facts), "ss_train_text_encoder": str(options.train_text_encoder)}

    encoders = text_encoder_modules(clip, family) if options.train_text_encoder else {}
    with kept_weights(model.model.diffusion_model, *encoders.values()):
        unet_config = model.model.model_config.unet_config
        base = _lora_layers(model.model.diffusion_model, encoders, family, unet_config) if options.save_lora_dim else None
        result = run_training(cfg, model, clip, vae, datasets, adapter, metadata, output_dir=output_dir,
                              model_name=model_name, hooks=hooks, latent_cache_dir=latent_cache_dir,
                              trains_text_encoders=options.train_text_encoder)
        if base is not None:
            path = Path(lora_dir or output_dir) / f"{cfg.output_name}_lora.safetensors"
            parts = dict(made[-1].parts)  # the modules trained (a dynamic-VRAM model trains a copy)
            unet = parts.pop("unet")
            lora, _ = extract(base, _lora_layers(unet, parts, family, unet_config), options.save_lora_dim, family=family,
                              name=f"{cfg.output_name}_lora", sources=(model_name, result.final_path.name))
            lora.save(str(path))
            result.saved.append(path)
        return result


def _lora_layers(unet: torch.nn.Module, encoders: dict, family: str, unet_config: dict) -> dict[str, torch.Tensor]:
    """CPU copies of the weights a LoRA would patch (sd-scripts' LoRA targets)."""
    with torch.inference_mode(False):
        weights = model_weights(unet, encoders or None, family, unet_config, conv=False)
        return {k: v.to("cpu", copy=True) for k, v in weights.items()}
