"""TrainConfig: the one set of training options, shared by the command line and the nodes.

Field names are sd-scripts' argument names, so a kohya config TOML (`--config_file`) loads
as it is: top-level keys and one level of sections ([model_arguments], [training_arguments]
...) are flattened, as sd-scripts does.
"""
import dataclasses
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
from dataclasses import dataclass, field
from pathlib import Path

from ..files.names import check_output_name


@dataclass
class TrainConfig:
    # model and data (command line; in a graph they come in as inputs)
    pretrained_model_name_or_path: str | None = None
    vae: str | None = None
    dataset_config: str | None = None
    train_data_dir: str | None = None
    reg_data_dir: str | None = None
    resolution: str | int | list[int] = 512
    train_batch_size: int = 1
    caption_extension: str = ".caption"
    enable_bucket: bool = False
    min_bucket_reso: int = 256
    max_bucket_reso: int = 1024
    bucket_reso_steps: int = 64
    bucket_no_upscale: bool = False
    shuffle_caption: bool = False
    keep_tokens: int = 0
    flip_aug: bool = False
    color_aug: bool = False
    random_crop: bool = False
    alpha_mask: bool = False  # loss masks from the images' alpha channel (a dataset default, as in sd-scripts)
    caption_dropout_rate: float = 0.0
    cache_latents: bool = True
    cache_latents_to_disk: bool = False
    cache_text_encoder_outputs: bool = True
    prior_loss_weight: float = 1.0

    # output
    output_dir: str | None = None  # None: ComfyUI's loras folder
    output_name: str = "lora"
    save_precision: str = "fp16"  # "float" | "fp16" | "bf16"
    save_every_n_steps: int = 0
    save_every_n_epochs: int = 0
    save_state: bool = True  # write the resumable state next to each saved file
    resume: str | None = None  # a state file written by save_state

    # length
    max_train_steps: int = 1600
    max_train_epochs: int = 0  # wins over max_train_steps when set, as in sd-scripts
    seed: int = 0

    # optimisation
    learning_rate: float = 1e-4
    unet_lr: float | None = None
    text_encoder_lr: float | None = None
    optimizer_type: str = "AdamW"
    optimizer_args: dict = field(default_factory=dict)
    lr_scheduler: str = "constant"
    lr_warmup_steps: float = 0  # an int, or a ratio of the total steps when < 1
    lr_scheduler_num_cycles: int = 1
    lr_scheduler_power: float = 1.0
    lr_scheduler_args: dict = field(default_factory=dict)
    gradient_accumulation_steps: int = 1
    max_grad_norm: float = 1.0  # 0 disables clipping
    mixed_precision: str = "no"  # "no" | "fp16" | "bf16"
    gradient_checkpointing: bool = False
    fused_backward_pass: bool = False  # each weight stepped in its gradient hook (training/fused_backward.py)

    # noise and loss
    v_parameterization: bool = False  # force v-prediction on a model that does not declare it
    zero_terminal_snr: bool = False
    noise_offset: float = 0.0
    adaptive_noise_scale: float = 0.0
    multires_noise_iterations: int = 0
    multires_noise_discount: float = 0.3
    min_snr_gamma: float = 0.0
    min_timestep: int = 0
    max_timestep: int = 1000
    # flow-matching models (Anima) only, sd-scripts' names: how training noise levels are drawn
    # (training/anima/timesteps.py); None = sd-scripts' default for the model ("sigmoid")
    timestep_sampling: str | None = None
    sigmoid_scale: float = 1.0
    discrete_flow_shift: float = 1.0
    weighting_scheme: str = "uniform"  # sd-scripts': loss weights (sigma_sqrt, cosmap) or "sigma" density (logit_normal, mode)
    logit_mean: float = 0.0
    logit_std: float = 1.0
    mode_scale: float = 1.29
    loss_type: str = "l2"  # "l2" | "l1" | "huber" | "smooth_l1"
    huber_schedule: str = "snr"  # "snr" | "exponential" | "constant"
    huber_c: float = 0.1
    # sd-scripts' --masked_loss: every training subset needs masks (alpha_mask or mask_dir; without
    # guide images, conditioning_data_dir's images); the loss is multiplied by them per pixel
    masked_loss: bool = False

    # text encoder
    clip_skip: int = 1  # 2: the layer before the last, as in sd-scripts

    # network (LoRA); other adapters read their own fields
    network_module: str = "networks.lora"
    network_dim: int = 4
    network_alpha: float = 1.0
    network_args: dict = field(default_factory=dict)
    network_dropout: float | None = None
    network_weights: str | None = None
    network_train_unet_only: bool = False
    network_train_text_encoder_only: bool = False
    cond_emb_dim: int = 32  # ControlNet-LLLite: guide-embedding width (sdxl_train_control_net_lllite.py)
    lllite_output_blocks: bool = False  # ControlNet-LLLite: modules on the decoder too (kohya's SKIP_OUTPUT_BLOCKS = False)

    # samples during training
    sample_every_n_steps: int = 0
    sample_every_n_epochs: int = 0
    sample_prompts: str | None = None  # a prompts file, or the prompt lines themselves
    sample_sampler: str = "euler_a"

    # held-out evaluation (an adapter's evaluation hook, e.g. LLLite's control gap): at the start,
    # every n steps and at the end
    validate_every_n_steps: int = 0
    # controllability at each held-out evaluation of a guided adapter (LLLite, ControlNet):
    # held-out guides sampled and scored (training/controllability/check.py); "off" or a map name
    controllability_map: str = "off"
    controllability_images: int = 2
    controllability_sample_steps: int = 8
    controllability_weights: str | None = None  # the detector's weight file, for learned maps (hed, depth ...)
    controllability_tolerance: float = 2.0  # edges: pixel tolerance of the F1

    # precision of the frozen base and the VAE (sd-scripts' names)
    full_bf16: bool = False  # the trained weights and their gradients in bf16 too (needs mixed_precision bf16)
    full_fp16: bool = False  # refused in validate(): see there
    fp8_base: bool = False  # frozen U-Net stored in float8_e4m3fn, computed in the mixed-precision dtype
    fp8_base_unet: bool = False  # the same here: fp8_base never touches the text encoders (their outputs are cached)
    no_half_vae: bool = False  # encode latents with the VAE in float32
    max_token_length: int | None = None  # captions cut to 75 (None), 150 or 225 tokens; docs/training_options.md
    weighted_captions: bool = False  # parse (word:1.2) emphasis in captions; sample prompts always are

    # what the user says the model is (sd-scripts' v2 / kohya GUI's sdxl): checked against the model
    v2: bool = False
    sdxl: bool = False

    # saving: keep only the newest n step/epoch saves (and their states)
    save_last_n_steps: int = 0
    save_last_n_epochs: int = 0
    save_last_n_steps_state: int = 0
    save_last_n_epochs_state: int = 0
    save_state_on_train_end: bool = False

    # what the file says about itself (ss_training_comment, modelspec.*)
    training_comment: str | None = None
    metadata_title: str | None = None
    metadata_author: str | None = None
    metadata_description: str | None = None
    metadata_license: str | None = None
    metadata_tags: str | None = None

    def __post_init__(self):
        for name in ("optimizer_args", "lr_scheduler_args"):
            setattr(self, name, parse_kv_args(getattr(self, name), name))
        # network_args stay strings: the network parses its own values (block lists "1,2,3")
        self.network_args = parse_kv_args(self.network_args, "network_args", literal=False)
        self.validate()

    def validate(self) -> None:
        def check(ok, msg):
            if not ok:
                raise ValueError(f"TrainConfig: {msg}")

        check(self.mixed_precision in ("no", "fp16", "bf16"), f"mixed_precision must be no, fp16 or bf16, not {self.mixed_precision!r}")
        check(self.save_precision in ("float", "fp32", "fp16", "bf16"), f"save_precision must be float, fp16 or bf16, not {self.save_precision!r}")
        check(self.loss_type in ("l2", "l1", "huber", "smooth_l1"), f"loss_type must be l2, l1, huber or smooth_l1, not {self.loss_type!r}")
        check(self.huber_schedule in ("snr", "exponential", "constant"), f"huber_schedule must be snr, exponential or constant, not {self.huber_schedule!r}")
        check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps must be >= 1")
        check(self.max_train_steps >= 1 or self.max_train_epochs >= 1, "max_train_steps or max_train_epochs must be >= 1")
        check(0 <= self.min_timestep < self.max_timestep <= 1000, f"need 0 <= min_timestep < max_timestep <= 1000, got {self.min_timestep}, {self.max_timestep}")
        check(not (self.noise_offset and self.multires_noise_iterations),
              "noise_offset and multires_noise_iterations cannot be used together (as in sd-scripts)")
        check(not (self.network_train_unet_only and self.network_train_text_encoder_only),
              "network_train_unet_only and network_train_text_encoder_only exclude each other")
        check(self.lr_warmup_steps >= 0, "lr_warmup_steps must be >= 0")
        check(self.max_token_length in (None, 75, 150, 225), f"max_token_length must be 75, 150 or 225, not {self.max_token_length!r}")
        check(not self.full_bf16 or self.mixed_precision == "bf16",
              "full_bf16 needs mixed_precision = \"bf16\" (as in sd-scripts): the forward pass must run in bf16 too")
        # torch's GradScaler refuses to unscale fp16 gradients (sd-scripts patches accelerate's scaler for it)
        check(not self.full_fp16, "full_fp16 is not supported: fp16 weights need fp16 gradients unscaled by a loss scaler, "
              "which torch's GradScaler refuses. Use full_bf16 = true with mixed_precision = \"bf16\", or "
              "mixed_precision = \"fp16\" alone (fp32 trained weights, fp16 compute)")
        check(not (self.v2 and self.sdxl), "v2 and sdxl exclude each other")
        if self.fused_backward_pass:
            from .fused_backward import fused_backward_problems

            problems = fused_backward_problems(self.optimizer_type, self.gradient_accumulation_steps, self.max_grad_norm,
                                               self.mixed_precision)
            check(not problems, "; ".join(problems))
        for name in ("save_last_n_steps", "save_last_n_epochs", "save_last_n_steps_state", "save_last_n_epochs_state"):
            check(getattr(self, name) >= 0, f"{name} must be >= 0")
        check(not self.save_last_n_steps or self.save_every_n_steps,
              "save_last_n_steps removes step saves: it needs save_every_n_steps")
        check(not self.save_last_n_epochs or self.save_every_n_epochs,
              "save_last_n_epochs removes epoch saves: it needs save_every_n_epochs")
        check_output_name(self.output_name)  # before any work: a bad name must not cost a training run

    @property
    def fp8(self) -> bool:
        return self.fp8_base or self.fp8_base_unet

    def check_model_family(self, family: str) -> None:
        """v2 / sdxl say what the model is; ComfyUI's loader already knows, so they can only agree
        or be wrong. family: comfy_bridge.trainable_family's "sd15" | "sd2" | "sdxl"."""
        names = {"sd15": "an SD1.x", "sd2": "an SD2.x", "sdxl": "an SDXL"}
        if self.v2 and family != "sd2":
            raise ValueError(f"TrainConfig: v2 = true, but the model is {names.get(family, family)} model. The model "
                             "family comes from the checkpoint: load an SD2.x checkpoint, or remove v2.")
        if self.sdxl and family != "sdxl":
            raise ValueError(f"TrainConfig: sdxl = true, but the model is {names.get(family, family)} model. The model "
                             "family comes from the checkpoint: load an SDXL checkpoint, or remove sdxl.")
        flow = {"timestep_sampling": self.timestep_sampling, "sigmoid_scale": self.sigmoid_scale,
                "discrete_flow_shift": self.discrete_flow_shift, "weighting_scheme": self.weighting_scheme,
                "logit_mean": self.logit_mean, "logit_std": self.logit_std, "mode_scale": self.mode_scale}
        if family == "anima":
            from .anima.timesteps import check

            check(self.timestep_sampling or "sigmoid", self.min_timestep, self.max_timestep, self.weighting_scheme)
        elif flow != {"timestep_sampling": None, "sigmoid_scale": 1.0, "discrete_flow_shift": 1.0,
                      "weighting_scheme": "uniform", "logit_mean": 0.0, "logit_std": 1.0, "mode_scale": 1.29}:
            raise ValueError(f"TrainConfig: timestep_sampling / sigmoid_scale / discrete_flow_shift / weighting_scheme / "
                             f"logit_mean / logit_std / mode_scale are for flow-matching models (Anima); the model is "
                             f"{names.get(family, family)} model: remove them")

    def warmup_steps(self, total_steps: int) -> int:
        w = self.lr_warmup_steps
        return int(w * total_steps) if 0 < w < 1 else int(w)

    @property
    def save_dtype_name(self) -> str:
        return {"float": "fp32", "fp32": "fp32"}.get(self.save_precision, self.save_precision)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def replace(self, **changes) -> "TrainConfig":
        return dataclasses.replace(self, **changes)


# sd-scripts options accepted and not used, because no value of them can change the trained
# weights, the saved files or the samples here. Each with the reason.
INERT_KEYS = {
    # attention kernels: ComfyUI picks its own optimized attention; the math is the same attention
    "xformers": "attention backend", "sdpa": "attention backend", "mem_eff_attn": "attention backend",
    # experiment trackers and console output: progress goes to ComfyUI's UI and log
    "logging_dir": "logging", "log_with": "logging", "log_prefix": "logging", "log_tracker_name": "logging",
    "log_tracker_config": "logging", "log_config": "logging", "wandb_api_key": "logging", "wandb_run_name": "logging",
    "console_log_level": "logging", "console_log_file": "logging", "console_log_simple": "logging",
    # data loader processes: batches are made in this process in an order fixed by seed and epoch
    "max_data_loader_n_workers": "loader workers", "persistent_data_loader_workers": "loader workers",
    # multi-process (DDP) settings: training runs on one device
    "ddp_timeout": "multi-GPU", "ddp_gradient_as_bucket_view": "multi-GPU", "ddp_static_graph": "multi-GPU",
    # where models wait between uses: ComfyUI's model management decides; values are unchanged
    "lowram": "memory placement", "highvram": "memory placement", "disable_mmap_load_safetensors": "model loading",
    # the tokenizer comes with ComfyUI's CLIP; cache settings change speed, not the cached values
    "tokenizer_cache_dir": "tokenizer", "cache_text_encoder_outputs_to_disk": "cache location",
    "text_encoder_batch_size": "caching batch", "vae_batch_size": "caching batch", "cache_info": "cache",
    "skip_cache_check": "cache",  # the latent cache is always checked against the VAE and image
    # files are always .safetensors here (checked in _check_inert for save_model_as)
    "use_safetensors": "file format", "save_model_as": "file format",
    "dynamo_backend": "compiler",  # only used with torch_compile, which is refused
}

# sd-scripts options this trainer does not implement: an error naming the key and why, unless the
# value is one that changes nothing (sd-scripts' default), so that complete kohya configs load.
_DATASET_TOML = "set it in the dataset TOML (dataset_config), [general] or a subset, or on the dataset node in a graph"
REFUSED_KEYS: dict[str, tuple[tuple, str]] = {
    "use_8bit_adam": ((False,), 'deprecated in sd-scripts: use optimizer_type = "AdamW8bit"'),
    "use_lion_optimizer": ((False,), 'deprecated in sd-scripts: use optimizer_type = "Lion"'),
    "lr_scheduler_type": ((None, ""), "custom scheduler modules: name the scheduler in lr_scheduler"),
    "lr_decay_steps": ((0, None), "warmup-stable-decay schedules are not implemented; lr_scheduler offers constant, "
                                  "constant_with_warmup, linear, cosine, cosine_with_restarts, polynomial"),
    "lr_scheduler_timescale": ((None,), "the inverse_sqrt schedule is not implemented"),
    "lr_scheduler_min_lr_ratio": ((None,), "cosine_with_min_lr / warmup_stable_decay are not implemented"),
    "torch_compile": ((False,), "not implemented: the U-Net runs eagerly"),
    "huggingface_repo_id": ((None, ""), "uploads are not implemented: nothing leaves this machine"),
    "huggingface_repo_type": ((None, ""), "uploads are not implemented"),
    "huggingface_path_in_repo": ((None, ""), "uploads are not implemented"),
    "huggingface_token": ((None, ""), "uploads are not implemented"),
    "huggingface_repo_visibility": ((None, ""), "uploads are not implemented"),
    "save_state_to_huggingface": ((False,), "uploads are not implemented"),
    "resume_from_huggingface": ((False,), "resume from a local state file (resume = \"<name>-state.pt\")"),
    "async_upload": ((False,), "uploads are not implemented"),
    "save_n_epoch_ratio": ((None, 0), "not implemented: use save_every_n_epochs"),
    "noise_offset_random_strength": ((False,), "not implemented: noise_offset is applied at its full strength"),
    "ip_noise_gamma": ((None, 0, 0.0), "input perturbation noise is not implemented"),
    "ip_noise_gamma_random_strength": ((False,), "input perturbation noise is not implemented"),
    "huber_scale": ((1.0, 1), "not implemented: the huber loss uses scale 1 (sd-scripts' default)"),
    "sample_at_first": ((False,), "not implemented: samples are made every n steps/epochs and at the end"),
    "debug_dataset": ((False,), "the dataset viewer is not implemented; this option would not train at all"),
    "dataset_class": ((None, ""), "custom dataset classes are not loaded: use a dataset TOML or folder tree"),
    "in_json": ((None, ""), "fine-tune metadata: set metadata_file on a subset in the dataset TOML"),
    "dataset_repeats": ((1, None), "set num_repeats on a subset in the dataset TOML"),
    "conditioning_data_dir": ((None, ""), "set conditioning_data_dir on a subset in the dataset TOML, or "
                                          "conditioning_dir on the folder dataset node"),
    "caption_extention": ((None,), "misspelled alias: use caption_extension"),
    "face_crop_aug_range": ((None, ""), "face-centred crop augmentation is not implemented"),
    "token_warmup_min": ((1,), "token warm-up is not implemented"),
    "token_warmup_step": ((0, 0.0), "token warm-up is not implemented"),
    "secondary_separator": ((None, ""), "not implemented: use caption_separator"),
    "enable_wildcard": ((False,), "caption wildcards ({a|b}) are not implemented"),
    "resize_interpolation": ((None,), "not implemented: images are resized with one fixed filter"),
    "caption_separator": ((",",), _DATASET_TOML),
    "keep_tokens_separator": (("",), _DATASET_TOML),
    "caption_prefix": ((None, ""), _DATASET_TOML),
    "caption_suffix": ((None, ""), _DATASET_TOML),
    "caption_dropout_every_n_epochs": ((0, None), _DATASET_TOML),
    "caption_tag_dropout_rate": ((0, 0.0), _DATASET_TOML),
    "no_metadata": ((False,), "not implemented: files always carry their training metadata"),
    "dim_from_weights": ((False,), "not implemented: set network_dim to the rank of network_weights"),
    "scale_weight_norms": ((None, 0, 0.0), "max-norm regularization of the LoRA weights is not implemented"),
    "base_weights": ((None, "", []), "merge that LoRA into the model in the graph first (LoraLoader), then train"),
    "base_weights_multiplier": ((None, []), "merge the LoRA in the graph first (LoraLoader's strength)"),
    "skip_until_initial_step": ((False,), "resume from a saved state instead (resume = \"<name>-state.pt\")"),
    "initial_epoch": ((None,), "resume from a saved state instead (resume = \"<name>-state.pt\")"),
    "initial_step": ((None,), "resume from a saved state instead (resume = \"<name>-state.pt\")"),
    "validation_split": ((0, 0.0), "validation sets are not implemented (LLLite training measures a held-out control gap)"),
    "validation_seed": ((None,), "validation sets are not implemented"),
    "validate_every_n_epochs": ((None,), "validation sets are not implemented; validate_every_n_steps drives the "
                                          "held-out evaluation of adapters that have one"),
    "max_validation_steps": ((None,), "validation sets are not implemented"),
    "cpu_offload_checkpointing": ((False,), "not implemented: gradient_checkpointing keeps activations on the device"),
    "blocks_to_swap": ((None, 0), "block swapping is not implemented (it is for DiT models)"),
    "scale_v_pred_loss_like_noise_pred": ((False,), "not implemented: use min_snr_gamma for loss weighting"),
    "v_pred_like_loss": ((None, 0, 0.0), "not implemented"),
    "debiased_estimation_loss": ((False,), "not implemented: use min_snr_gamma for loss weighting"),
    "deepspeed": ((False,), "DeepSpeed is not supported: training runs on one device"),
    "zero_stage": ((2,), "DeepSpeed is not supported"),
    "offload_optimizer_device": ((None,), "DeepSpeed is not supported"),
    "offload_optimizer_nvme_path": ((None,), "DeepSpeed is not supported"),
    "offload_param_device": ((None,), "DeepSpeed is not supported"),
    "offload_param_nvme_path": ((None,), "DeepSpeed is not supported"),
    "zero3_init_flag": ((False,), "DeepSpeed is not supported"),
    "zero3_save_16bit_model": ((False,), "DeepSpeed is not supported"),
    "fp16_master_weights_and_gradients": ((False,), "DeepSpeed is not supported"),
    "output_config": ((False,), "writing the arguments to a TOML instead of training is not implemented"),
    "config_file": ((None, ""), "a config file cannot name another; on the command line use --config_file"),
    "metadata_usage_hint": ((None, ""), "not written into the file yet"),
    "metadata_thumbnail": ((None, ""), "not written into the file yet"),
    "metadata_merged_from": ((None, ""), "not written into the file yet"),
    "metadata_trigger_phrase": ((None, ""), "not written into the file yet"),
    "metadata_preprocessor": ((None, ""), "not written into the file yet"),
    "metadata_is_negative_embedding": ((None, ""), "not written into the file yet"),
}


def _check_inert_and_refused(values: dict, source: str) -> None:
    problems = []
    for key, value in values.items():
        if key == "save_model_as" and value not in (None, "safetensors"):
            problems.append(f"save_model_as = {value!r}: files are written as .safetensors only (a format that cannot "
                            "carry code); set save_model_as = \"safetensors\" or remove it")
        elif key in REFUSED_KEYS:
            neutral, reason = REFUSED_KEYS[key]
            if not any(value == n and type(value) is type(n) or value is n for n in neutral):
                problems.append(f"{key} = {value!r} is not supported: {reason}")
    if problems:
        raise ValueError(f"{source}: " + "; ".join(problems))


def unknown_key_message(key: str, known) -> str:
    """`key` is unknown: name it, and the closest known key when there is one (a typo)."""
    import difflib

    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f"{key} (did you mean {close[0]}?)" if close else key


def parse_kv_args(value, what: str = "arguments", literal: bool = True) -> dict:
    """sd-scripts' `key=value` argument lists (`["weight_decay=0.01", "betas=0.9,0.999"]`, or the
    same as one space-separated string) -> dict; values are Python literals, commas make
    tuples (literal=False: values stay strings)."""
    if isinstance(value, dict):
        return dict(value)
    if value is None:
        return {}
    items = value.split() if isinstance(value, str) else list(value)
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what}: {item!r} is not key=value")
        key, raw = item.split("=", 1)
        if not literal:
            out[key.strip()] = raw.strip()
            continue
        parts = [p for p in raw.split(",") if p != ""]
        out[key.strip()] = _literal(parts[0]) if len(parts) == 1 else tuple(_literal(p) for p in parts)
    return out


def _literal(text: str):
    import ast

    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # bare words (an optimizer mode name) stay strings


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    with open(path, "rb") as f:
        try:
            return tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"{path}: not valid TOML: {e}") from e


def flatten_sections(raw: dict) -> dict:
    """sd-scripts flattens one level of [sections] into plain arguments."""
    flat = {}
    for key, value in raw.items():
        flat.update(value if isinstance(value, dict) and key not in _DICT_FIELDS else {key: value})
    return flat


_FIELDS = {f.name for f in dataclasses.fields(TrainConfig)}
_DICT_FIELDS = {"optimizer_args", "lr_scheduler_args", "network_args"}


KNOWN_KEYS = frozenset(_FIELDS | INERT_KEYS.keys() | REFUSED_KEYS.keys())


def config_from_dict(values: dict, source: str = "config") -> TrainConfig:
    """Training options by sd-scripts' names -> TrainConfig. Keys that change nothing here are
    accepted (INERT_KEYS); unsupported ones are refused with the reason (REFUSED_KEYS);
    unknown ones are refused with the closest known key."""
    unknown = sorted(k for k in values if k not in KNOWN_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown training option(s) {', '.join(unknown_key_message(k, KNOWN_KEYS) for k in unknown)}")
    _check_inert_and_refused(values, source)
    return TrainConfig(**{k: v for k, v in values.items() if k in _FIELDS})


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A kohya-style config TOML -> TrainConfig; `overrides` (e.g. from the command line) win."""
    values = flatten_sections(read_toml(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values, str(path))


# Dataset options in a graph: the dataset arrives built on the `dataset` input, so training
# options that sd-scripts passes to its dataset are applied to that dataset here (a value in
# extra_options wins over the dataset node's), or refused where they cannot apply.
_GRAPH_DATASET_KEYS = {"resolution": (int, list, str), "train_batch_size": int, "enable_bucket": bool, "min_bucket_reso": int,
                       "max_bucket_reso": int, "bucket_reso_steps": int, "bucket_no_upscale": bool}
_GRAPH_SUBSET_KEYS = {"caption_extension": str, "shuffle_caption": bool, "keep_tokens": int, "flip_aug": bool,
                      "color_aug": bool, "random_crop": bool, "alpha_mask": bool, "caption_dropout_rate": (float, int), "caption_separator": str,
                      "keep_tokens_separator": str, "caption_prefix": str, "caption_suffix": str,
                      "caption_dropout_every_n_epochs": int, "caption_tag_dropout_rate": (float, int)}
_GRAPH_SOURCE_KEYS = ("train_data_dir", "reg_data_dir", "dataset_config", "conditioning_data_dir", "in_json")


def apply_dataset_options(datasets: list, options: dict, where: str) -> tuple[dict, list]:
    """Split a graph node's extra_options: dataset keys are applied to copies of `datasets`
    (DatasetConfigs; the input stays untouched, ComfyUI caches it) and range-checked again;
    returns (the remaining training options, the datasets)."""
    from .data.config import check_dataset
    from .data.errors import DatasetError

    rest, ds_opts, sub_opts = {}, {}, {}
    for key, value in options.items():
        if key in _GRAPH_SOURCE_KEYS:
            raise DatasetError(f"{where}: extra_options `{key}` cannot apply: the images come from the `dataset` input. "
                               "Set it on the dataset node (Training Dataset from Folder / from TOML).")
        types = _GRAPH_DATASET_KEYS.get(key) or _GRAPH_SUBSET_KEYS.get(key)
        if types is None:
            rest[key] = value
            continue
        types = types if isinstance(types, tuple) else (types,)
        if isinstance(value, bool) != (bool in types) or not isinstance(value, types):
            raise DatasetError(f"{where}: extra_options `{key}` must be {' or '.join(t.__name__ for t in types)}, got {value!r}.")
        (ds_opts if key in _GRAPH_DATASET_KEYS else sub_opts)[key] = value
    if "resolution" in ds_opts:
        reso = ds_opts["resolution"]
        parts = [int(p) for p in reso.replace("x", ",").split(",")] if isinstance(reso, str) else reso
        parts = [parts] if isinstance(parts, int) else list(parts)
        if len(parts) not in (1, 2) or not all(isinstance(p, int) for p in parts):
            raise DatasetError(f"{where}: extra_options `resolution` must be an integer or [width, height], got {reso!r}.")
        ds_opts["resolution"] = (parts[0], parts[-1])
    if "train_batch_size" in ds_opts:
        ds_opts["batch_size"] = ds_opts.pop("train_batch_size")
    for key in ("caption_dropout_rate", "caption_tag_dropout_rate"):
        if key in sub_opts:
            sub_opts[key] = float(sub_opts[key])
    if "caption_extension" in sub_opts and not any(s.image_dir is not None for d in datasets for s in d.subsets):
        raise DatasetError(f"{where}: extra_options `caption_extension` cannot apply: this dataset has no image folder "
                           "(in-graph images carry their captions).")
    if not ds_opts and not sub_opts:
        return rest, datasets
    out = []
    for i, ds in enumerate(datasets, 1):
        new = dataclasses.replace(ds, subsets=[dataclasses.replace(s, **sub_opts) for s in ds.subsets], **ds_opts)
        check_dataset(new, f"{where}: dataset #{i} with the extra_options {', '.join(sorted({**ds_opts, **sub_opts}))}")
        out.append(new)
    return rest, out
