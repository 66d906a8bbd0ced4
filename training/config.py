"""TrainConfig: the one set of training options, shared by the command line and the nodes.

Field names are sd-scripts' argument names, so a kohya config TOML (`--config_file`) loads
as it is: top-level keys and one level of sections ([model_arguments], [training_arguments]
...) are flattened, as sd-scripts does.
"""
import dataclasses
import tomllib
from dataclasses import dataclass, field
from pathlib import Path


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
    loss_type: str = "l2"  # "l2" | "l1" | "huber" | "smooth_l1"
    huber_schedule: str = "snr"  # "snr" | "exponential" | "constant"
    huber_c: float = 0.1

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

    # samples during training
    sample_every_n_steps: int = 0
    sample_every_n_epochs: int = 0
    sample_prompts: str | None = None  # a prompts file, or the prompt lines themselves
    sample_sampler: str = "euler_a"

    # held-out evaluation (an adapter's evaluation hook, e.g. LLLite's control gap): at the start,
    # every n steps and at the end
    validate_every_n_steps: int = 0

    # precision of the frozen base and the VAE (sd-scripts' names)
    full_bf16: bool = False  # the trained weights and their gradients in bf16 too
    full_fp16: bool = False
    fp8_base: bool = False  # frozen base stored in float8_e4m3fn, computed in the mixed-precision dtype
    no_half_vae: bool = False  # encode latents with the VAE in float32
    max_token_length: int | None = None  # 75, 150 or 225 (None: 75)

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


# sd-scripts options that exist in users' config files but change nothing here (attention
# backends, logging, loader workers, formats we always use). Accepted so that a kohya config
# loads as it is; anything else unknown is an error naming the key.
IGNORED_KEYS = frozenset({
    "xformers", "sdpa", "mem_eff_attn", "persistent_data_loader_workers", "max_data_loader_n_workers",
    "logging_dir", "log_prefix", "log_with", "log_tracker_name", "log_config", "wandb_api_key",
    "lowram", "highvram", "save_model_as", "no_half_vae", "full_fp16", "full_bf16", "fp8_base",
    "training_comment", "metadata_title", "metadata_author",
    "metadata_description", "metadata_license", "metadata_tags", "v2", "sdxl", "console_log_simple",
    "ddp_timeout", "save_last_n_steps", "save_last_n_epochs", "save_last_n_steps_state",
    "save_last_n_epochs_state", "save_state_on_train_end", "max_token_length", "cache_text_encoder_outputs_to_disk",
    "vae_batch_size", "max_bucket_reso_steps", "debug_dataset", "mixed_precision_type",
})


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


def config_from_dict(values: dict, source: str = "config") -> TrainConfig:
    unknown = sorted(k for k in values if k not in _FIELDS and k not in IGNORED_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown training option(s) {', '.join(unknown)}")
    return TrainConfig(**{k: v for k, v in values.items() if k in _FIELDS})


def load_config(path: str | Path, **overrides) -> TrainConfig:
    """A kohya-style config TOML -> TrainConfig; `overrides` (e.g. from the command line) win."""
    values = flatten_sections(read_toml(path))
    values.update({k: v for k, v in overrides.items() if v is not None})
    return config_from_dict(values, str(path))
