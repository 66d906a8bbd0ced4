"""One training run from ComfyUI objects and a TrainConfig: the assembly both the command line
and the nodes call (data -> latents and text cached -> encoders released -> model made
trainable -> engine). `train_lora` is the LoRA case; other adapters pass their own factory.
"""
import dataclasses
import json
import logging
from collections.abc import Callable, Sequence
from contextlib import closing
from pathlib import Path

import torch

from .comfy_bridge import (TextConditioner, TrainingModel, latent_encoder, model_file, trainable_family, trainable_model,
                           unload_from_device, vae_file, vae_identity)
from .config import TrainConfig
from .data.config import DatasetConfig, SubsetConfig, load_dataset_toml
from .data.errors import DatasetError
from .data.folders import subsets_from_folder_tree
from .data.loader import TrainingData
from .data.npz_latents import SdScriptsLatents
from .distributed import current
from .anima.lllite_adapter import anima_lllite_adapter
from .anima.model import frame_latents, is_anima, trainable_anima
from .anima.text import AnimaTextConditioner
from .anima.timesteps import flow_metadata
from .engine import TrainHooks, TrainingEngine, TrainResult
from .preflight import check_batches, check_options
from .prompts import parse_prompts
from .samples import GuidedSamples, SampleRenderer

log = logging.getLogger(__name__)


def _resolution(value) -> int | list[int]:
    """sd-scripts' --resolution: 512, "512", "768,512" or [768, 512] -> int or [w, h]."""
    if isinstance(value, str):
        parts = [int(p) for p in value.replace("x", ",").split(",") if p.strip()]
        return parts[0] if len(parts) == 1 else parts
    return value


def dataset_fallback(cfg: TrainConfig) -> dict:
    """The trainer's options as the lowest layer of a dataset TOML (sd-scripts' rule)."""
    return {
        "resolution": _resolution(cfg.resolution), "batch_size": cfg.train_batch_size,
        "enable_bucket": cfg.enable_bucket, "min_bucket_reso": cfg.min_bucket_reso, "max_bucket_reso": cfg.max_bucket_reso,
        "bucket_reso_steps": cfg.bucket_reso_steps, "bucket_no_upscale": cfg.bucket_no_upscale,
        "caption_extension": cfg.caption_extension, "shuffle_caption": cfg.shuffle_caption, "keep_tokens": cfg.keep_tokens,
        "flip_aug": cfg.flip_aug, "color_aug": cfg.color_aug, "random_crop": cfg.random_crop, "alpha_mask": cfg.alpha_mask,
        "caption_dropout_rate": float(cfg.caption_dropout_rate),
    }


def datasets_from_config(cfg: TrainConfig) -> list[DatasetConfig]:
    """The datasets a config names: its dataset TOML, else its train_data_dir folder tree."""
    fallback = dataset_fallback(cfg)
    if cfg.dataset_config:
        return load_dataset_toml(cfg.dataset_config, fallback=fallback)
    if cfg.train_data_dir:
        subset_keys = {k: v for k, v in fallback.items() if k in SubsetConfig.__dataclass_fields__}
        subsets = subsets_from_folder_tree(cfg.train_data_dir, cfg.reg_data_dir, template=SubsetConfig(**subset_keys))
        reso = fallback["resolution"]
        ds = {k: v for k, v in fallback.items() if k in DatasetConfig.__dataclass_fields__ and k != "resolution"}
        return [DatasetConfig(subsets=subsets, resolution=(reso, reso) if isinstance(reso, int) else tuple(reso), **ds)]
    raise DatasetError("No training data: set dataset_config (a dataset TOML) or train_data_dir (a folder tree).")


def data_facts(data: TrainingData) -> tuple[dict, dict[str, str]]:
    """Training facts about the data, and the data side's own ss_* metadata strings. Facts
    sd-scripts takes from its one dataset's options come from the first dataset and subset."""
    meta = data.metadata()
    datasets = json.loads(meta["ss_datasets"])
    first = data.datasets[0]
    facts = {
        "num_train_images": data.num_train_images,
        "num_reg_images": data.num_reg_images,
        "num_batches_per_epoch": len(data),
        "datasets": datasets,
        "bucket_info": datasets[0]["bucket_info"] if len(datasets) == 1 else [d["bucket_info"] for d in datasets],
        "tag_frequency": json.loads(meta["ss_tag_frequency"]),
        "dataset_dirs": json.loads(meta["ss_dataset_dirs"]),
        "reg_dataset_dirs": {sub.name: {"n_repeats": info["num_repeats"], "img_count": info["img_count"]}
                             for ds, d in zip(data.datasets, datasets) for sub, info in zip(ds.subsets, d["subsets"]) if sub.is_reg},
        "resolution": tuple(first.resolution),
        "batch_size_per_device": first.batch_size,
        "num_processes": data.world,
        **{k: getattr(first, k) for k in ("enable_bucket", "bucket_no_upscale", "min_bucket_reso", "max_bucket_reso")},
        **{k: getattr(first.subsets[0], k) for k in ("color_aug", "flip_aug", "random_crop", "shuffle_caption", "keep_tokens",
                                                     "caption_dropout_rate", "caption_dropout_every_n_epochs",
                                                     "caption_tag_dropout_rate")},
    }
    return facts, meta


# sd-scripts' Anima latent caches hold the VAE's latents already normalised ((z - mean) / std),
# which is what ComfyUI's Wan21 latent format makes of them: taken as they are
ANIMA_NPZ = SdScriptsLatents("_anima.npz", lambda latents: latents, multi_resolution=True)

AdapterFactory = Callable[[TrainingModel], object]
MetadataMaker = Callable[[dict], dict[str, str]]
# (model, text, adapter, data) -> the engine's evaluate hook (step -> metrics), e.g. control_gap.ControlGap
EvaluationFactory = Callable[[TrainingModel, TextConditioner, object, TrainingData], Callable[[int], dict[str, float]]]


def run_training(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], adapter_factory: AdapterFactory,
                 make_metadata: MetadataMaker, *, output_dir: str | Path, model_name: str = "", hooks: TrainHooks | None = None,
                 latent_cache_dir: str | Path | None = None, data_options: dict | None = None,
                 trains_text_encoders: bool = False, text_options: dict | None = None,
                 evaluation: EvaluationFactory | None = None, sample_guide: torch.Tensor | None = None) -> TrainResult:
    """Train one adapter. Callable inside a ComfyUI graph (it leaves inference mode itself).
    trains_text_encoders must match the adapter the factory builds: it decides whether text
    outputs can be cached before the model is loaded. evaluation: builds the held-out
    evaluation hook (data_options holdout=N sets the held-out images). sample_guide: the guide
    image ((1, 3, H, W) in [-1, 1]) of every sample of a guided adapter (LLLite). text_options:
    more TextConditioner arguments (Textual Inversion's embeddings and caption rewrite)."""
    if (cfg.controllability_map or "off") != "off" and evaluation is None:  # no silent option
        raise ValueError(f"controllability_map = {cfg.controllability_map!r}: the controllability check runs in "
                         "LLLite, ControlNet and distillation training only")
    group = current()  # under torchrun: this process's part of a data-parallel run
    with torch.inference_mode(False):
        anima = is_anima(model)  # the DiT family: its own schedule, text and model call (training/anima/)
        family = "anima" if anima else trainable_family(model)
        cfg.check_model_family(family)
        check_options(cfg, datasets, model.model.model_config.unet_config)
        latent_format = model.model.latent_format
        # no_half_vae on a half VAE makes other latents: they must not share a disk cache entry
        vae_id = vae_identity(vae, latent_format) + (":fp32" if cfg.no_half_vae and vae.vae_dtype != torch.float32 else "")
        encode = latent_encoder(vae, latent_format, cfg.no_half_vae)
        data = TrainingData(datasets, encode_latents=frame_latents(encode) if anima else encode, vae_id=vae_id,
                            seed=cfg.seed, cache_latents=cfg.cache_latents, masked_loss=cfg.masked_loss,
                            npz_latents=ANIMA_NPZ if anima else SdScriptsLatents(f"_{'sdxl' if family == 'sdxl' else 'sd'}.npz",
                                                                                 latent_format.process_in),
                            cache_dir=latent_cache_dir if cfg.cache_latents_to_disk else None,
                            shard=(group.rank, group.world), **(data_options or {}))
        check_batches(data)
        phase = (hooks.phase if hooks else None) or (lambda text: None)
        data.prepare(lambda done, total: phase(f"caching latents {done}/{total}"))
        if cfg.cache_latents:
            unload_from_device(vae.patcher)

        text = AnimaTextConditioner(clip, model.model.diffusion_model, trains_text_encoders) if anima else TextConditioner(
            clip, family, trainable=trains_text_encoders, clip_skip=cfg.clip_skip,
            max_tokens=cfg.max_token_length or 75, caption_weights=cfg.weighted_captions, **(text_options or {}))
        first = data.datasets[0]
        prompts = parse_prompts(cfg.sample_prompts, default_size=max(first.resolution))
        wants_samples = group.is_main and bool(prompts) and bool(cfg.sample_every_n_steps or cfg.sample_every_n_epochs)
        captions = data.fixed_captions()
        if not trains_text_encoders:
            text.precompute([p for pr in (prompts if wants_samples else []) for p in (pr.prompt, pr.negative)], prompts=True)
            if cfg.cache_text_encoder_outputs and captions is not None:
                unique = list(dict.fromkeys(captions))
                for i, caption in enumerate(unique):
                    text.precompute([caption])
                    phase(f"caching text {i + 1}/{len(unique)}")
                text.release()
            elif captions is None:
                log.info("captions change every step (shuffle/dropout): the text encoders stay loaded and run each step")

        facts, data_meta = data_facts(data)
        facts.update(sd_model_name=model_name, sd_model_file=model_file(model), vae_file=vae_file(vae))

        # Anima: the timestep keys sd-scripts' anima_train_network.py records
        flow_meta = flow_metadata(cfg.timestep_sampling, cfg.sigmoid_scale, cfg.discrete_flow_shift, cfg.weighting_scheme,
                                  cfg.logit_mean, cfg.logit_std, cfg.mode_scale) if anima else {}

        def metadata(f: dict) -> dict[str, str]:
            return {**make_metadata(f), **data_meta, **flow_meta}

        with (trainable_anima if anima else trainable_model)(model, cfg.mixed_precision, cfg.gradient_checkpointing,
                                                             cfg.v_parameterization, cfg.zero_terminal_snr, cfg.fp8) as tm, closing(text):
            if tm.schedule.v_prediction:
                log.info("training a v-prediction model")
            adapter = adapter_factory(tm)
            if adapter.trains_text_encoders != trains_text_encoders:
                raise RuntimeError("run_training: trains_text_encoders does not match the adapter")
            sampler = SampleRenderer(tm, vae, prompts, cfg.sample_sampler, cfg.seed) if wants_samples else None
            if sampler is not None and sample_guide is not None:
                sampler = GuidedSamples(sampler, adapter, sample_guide)
            if evaluation is not None and group.is_main:
                hooks = dataclasses.replace(hooks or TrainHooks(), evaluate=evaluation(tm, text, adapter, data))
            engine = TrainingEngine(cfg, tm, text, adapter, data, output_dir, metadata, facts, sampler, hooks)
            return engine.run()


def run_guided_training(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig],
                        adapter_factory: AdapterFactory, evaluator, *, holdout: int, size_multiple: int,
                        sample_guide: torch.Tensor | None, **run_options) -> TrainResult:
    """run_training for an adapter steered by guide images (LLLite, ControlNet, distillation):
    every batch carries guides; `holdout` images (0: none) are kept out for `evaluator`, built
    as evaluator(tm, text, adapter, held-out batches, (min, max timestep), seed=cfg.seed)
    (ControlGap, TeacherAgreement), and with cfg.controllability_map the controllability of
    held-out samples beside it (controllability/check.py). run_options: output_dir, model_name,
    hooks, latent_cache_dir."""
    from .controllability.check import check_options, controllability_check, combined
    from .lora import training_metadata

    checking = check_options(cfg)
    checking.check(holdout)  # before any work: a run must not end with nothing to measure

    def evaluation(tm, text, adapter, data):
        holdout_batches = data.holdout_batches()
        hook = evaluator(tm, text, adapter, holdout_batches, (cfg.min_timestep, cfg.max_timestep), seed=cfg.seed)
        if not checking.on:
            return hook
        return combined(hook, controllability_check(tm, text, adapter, holdout_batches, checking, vae, seed=cfg.seed))

    return run_training(cfg, model, clip, vae, datasets, adapter_factory, training_metadata,
                        data_options={"size_multiple": size_multiple, "require_guides": True, "holdout": holdout},
                        evaluation=evaluation if holdout else None, sample_guide=sample_guide, **run_options)


def check_sample_guide(cfg: TrainConfig, sample_guide: torch.Tensor | None, what: str,
                       error: type[Exception] = ValueError) -> None:
    """A guided adapter (LLLite, ControlNet) renders every sample with one guide image: asking
    for samples without it fails before any work starts."""
    if sample_guide is None and cfg.sample_prompts and (cfg.sample_every_n_steps or cfg.sample_every_n_epochs):
        raise error(f"{what} sample images need a sample guide image")


def lora_config(cfg: TrainConfig):
    from .lora import LoRAConfig

    return LoRAConfig.from_kohya(
        network_module=cfg.network_module, network_dim=cfg.network_dim, network_alpha=cfg.network_alpha,
        network_args=cfg.network_args, network_dropout=cfg.network_dropout,
        network_train_unet_only=cfg.network_train_unet_only,
        network_train_text_encoder_only=cfg.network_train_text_encoder_only,
        network_weights=cfg.network_weights, seed=cfg.seed)


def train_lora(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], *, output_dir: str | Path,
               model_name: str = "", hooks: TrainHooks | None = None, latent_cache_dir: str | Path | None = None,
               ) -> TrainResult:
    """Train a kohya LoRA; files land in output_dir as <output_name>.safetensors (and the
    step/epoch saves), each with its resumable state."""
    from .lora import LoRAAdapter, training_metadata

    lcfg = lora_config(cfg)
    return run_training(
        cfg, model, clip, vae, datasets, lambda tm: LoRAAdapter(lcfg, tm.model_config), training_metadata,
        output_dir=output_dir, model_name=model_name, hooks=hooks, latent_cache_dir=latent_cache_dir,
        trains_text_encoders=lcfg.train_text_encoder)


def train_lllite(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig], *, output_dir: str | Path,
                 model_name: str = "", hooks: TrainHooks | None = None, latent_cache_dir: str | Path | None = None,
                 holdout: int = 4,
                 sample_guide: torch.Tensor | None = None) -> TrainResult:
    """Train a kohya ControlNet-LLLite (cfg.cond_emb_dim, network_dim, network_dropout,
    lllite_output_blocks, network_weights) on datasets with guide images; files land in output_dir as for LoRA.
    holdout: images kept out of training for the control gap (control_gap.py), measured at
    the start, every cfg.validate_every_n_steps and at the end; 0 turns it off.
    sample_guide: (1, 3, H, W) in [-1, 1], the guide of every sample image."""
    from ..lllite.module import LAYOUTS
    from .control_gap import ControlGap
    from .lllite_adapter import LLLiteAdapter

    family = "anima" if is_anima(model) else trainable_family(model)
    if family not in LAYOUTS and family != "anima":
        raise ValueError(f"ControlNet-LLLite training supports SDXL, SD1.5 and Anima models; this one is {family}")
    check_sample_guide(cfg, sample_guide, "LLLite")

    def adapter(tm: TrainingModel) -> LLLiteAdapter:
        if family == "anima":
            return anima_lllite_adapter(cfg)
        return LLLiteAdapter(tm.family, cfg.cond_emb_dim, cfg.network_dim, cfg.network_dropout, cfg.network_weights,
                             checkpoint_embeddings=cfg.gradient_checkpointing, name=cfg.output_name,
                             output_blocks=cfg.lllite_output_blocks)

    return run_guided_training(cfg, model, clip, vae, datasets, adapter, ControlGap, holdout=holdout, size_multiple=32,
                               sample_guide=sample_guide, output_dir=output_dir, model_name=model_name, hooks=hooks,
                               latent_cache_dir=latent_cache_dir)
