"""LoRA network options, named like sd-scripts' network options and network_args."""
from dataclasses import dataclass

NETWORK_MODULES = ("networks.lora", "networks.dylora")
# network_args keys sd-scripts' networks.lora / networks.dylora accept that we implement
_ARG_TYPES = {
    "conv_dim": int, "conv_alpha": float, "rank_dropout": float, "module_dropout": float,
    "block_dims": str, "block_alphas": str, "conv_block_dims": str, "conv_block_alphas": str,
    "down_lr_weight": str, "mid_lr_weight": str, "up_lr_weight": str,
    "block_lr_zero_threshold": float, "unit": int,
}


@dataclass
class LoRAConfig:
    """dim/alpha: rank and alpha of Linear and 1x1-conv modules (LoRA-LierLa); conv_dim/
    conv_alpha add 3x3 convs (LoRA-C3Lier). dropout is sd-scripts' network_dropout (on the
    down output), rank_dropout and module_dropout as in its network_args. block_* take
    one value per U-Net block (25 on SD1.x, 23 on SDXL, see blocks.py), as lists or
    comma strings; *_lr_weight take values or a preset. unit set means DyLoRA.
    network_weights: a kohya LoRA file to start from; its modules, ranks and alphas
    replace dim/alpha/conv_*/block_dims. seed: initial down weights."""

    dim: int = 4
    alpha: float = 1.0
    conv_dim: int | None = None
    conv_alpha: float | None = None
    dropout: float | None = None
    rank_dropout: float | None = None
    module_dropout: float | None = None
    train_unet: bool = True
    train_text_encoder: bool = True
    block_dims: str | list | None = None
    block_alphas: str | list | None = None
    conv_block_dims: str | list | None = None
    conv_block_alphas: str | list | None = None
    down_lr_weight: str | list | None = None
    mid_lr_weight: str | list | float | None = None
    up_lr_weight: str | list | None = None
    block_lr_zero_threshold: float = 0.0
    unit: int | None = None
    network_weights: str | None = None
    seed: int = 0

    def __post_init__(self):
        if self.dim < 1:
            raise ValueError(f"LoRA dim (rank) must be at least 1, got {self.dim}")
        if self.conv_dim is not None and self.conv_dim < 0:
            raise ValueError(f"LoRA conv_dim must not be negative, got {self.conv_dim}")
        for name in ("dropout", "rank_dropout", "module_dropout"):
            p = getattr(self, name)
            if p is not None and not 0 <= p < 1:
                raise ValueError(f"LoRA {name} must be in [0, 1), got {p}")
        if not (self.train_unet or self.train_text_encoder):
            raise ValueError("LoRA trains nothing: both train_unet and train_text_encoder are off")
        if self.unit is not None:
            if self.unit < 1 or self.dim % self.unit:
                raise ValueError(f"DyLoRA unit must divide dim: dim {self.dim}, unit {self.unit}")
            if self.conv_dim is not None and self.conv_dim != self.dim:
                raise ValueError(f"DyLoRA needs conv_dim equal to dim (got conv_dim {self.conv_dim}, dim {self.dim})")
            if any(getattr(self, n) is not None for n in ("block_dims", "conv_block_dims", "down_lr_weight", "mid_lr_weight", "up_lr_weight")):
                raise ValueError("DyLoRA does not take block_dims, conv_block_dims or block lr weights (sd-scripts' networks.dylora has none)")

    @property
    def network_module(self) -> str:
        return "networks.dylora" if self.unit is not None else "networks.lora"

    def network_args(self) -> dict[str, str]:
        """The set network_args as sd-scripts stores them in ss_network_args."""
        args = {}
        for name in _ARG_TYPES:
            value = getattr(self, name)
            if value is None or (name == "block_lr_zero_threshold" and value == 0.0):
                continue
            args[name] = ",".join(str(v) for v in value) if isinstance(value, (list, tuple)) else str(value)
        return args

    @classmethod
    def from_kohya(cls, network_module: str = "networks.lora", network_dim: int | None = None,
                   network_alpha: float | None = None, network_args: list[str] | dict | None = None,
                   network_dropout: float | None = None, network_train_unet_only: bool = False,
                   network_train_text_encoder_only: bool = False, network_weights: str | None = None,
                   seed: int = 0) -> "LoRAConfig":
        """From sd-scripts' options (config TOML / command line): network_args as
        ["conv_dim=4", ...] or a dict."""
        if network_module not in NETWORK_MODULES:
            raise ValueError(f"network_module {network_module!r} is not supported; expected one of {', '.join(NETWORK_MODULES)}")
        if isinstance(network_args, (list, tuple)):
            pairs = {}
            for item in network_args:
                key, sep, value = item.partition("=")
                if not sep:
                    raise ValueError(f"network_args entry {item!r} is not key=value")
                pairs[key.strip()] = value.strip()
            network_args = pairs
        kwargs = {}
        for key, value in (network_args or {}).items():
            if key not in _ARG_TYPES:
                raise ValueError(f"network_args: {key!r} is not supported; supported: {', '.join(_ARG_TYPES)}")
            try:
                kwargs[key] = _ARG_TYPES[key](value)
            except ValueError:
                raise ValueError(f"network_args: {key}={value!r} is not a valid {_ARG_TYPES[key].__name__}") from None
        if network_module == "networks.dylora":
            kwargs.setdefault("unit", 1)
        elif "unit" in kwargs:
            raise ValueError("network_args: unit is a DyLoRA option; use network_module networks.dylora")
        return cls(dim=4 if network_dim is None else int(network_dim), alpha=1.0 if network_alpha is None else float(network_alpha),
                   dropout=network_dropout, train_unet=not network_train_text_encoder_only,
                   train_text_encoder=not network_train_unet_only, network_weights=network_weights, seed=seed, **kwargs)

