"""Optimizers by sd-scripts' names (`optimizer_type`) with `optimizer_args`.

AdamW, SGDNesterov and any torch.optim class by its bare name; Lion from lion-pytorch (the
package sd-scripts uses); AdamW8bit / Lion8bit / PagedAdamW8bit / PagedLion8bit /
SGDNesterov8bit / PagedAdamW / PagedAdamW32bit (bitsandbytes), Prodigy (prodigyopt),
DAdaptation* (dadaptation) and AdaFactor (transformers), each with a message naming its package
when it is missing; `module.Class` from the known optimizer packages only (class_allowlist.py).
"""
from collections.abc import Sequence

import torch

from .class_allowlist import DisallowedClass, OptimizerUnavailable, import_class

__all__ = ["DisallowedClass", "OptimizerUnavailable", "adafactor_uses_relative_step", "build_optimizer"]

# name (lower case) -> (module, class, package to install, default args)
_NAMED = {
    "lion": ("lion_pytorch", "Lion", "lion-pytorch", {}),
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", {}),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes", {}),
    "pagedadamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes", {}),
    "pagedlion8bit": ("bitsandbytes.optim", "PagedLion8bit", "bitsandbytes", {}),
    "pagedadamw": ("bitsandbytes.optim", "PagedAdamW", "bitsandbytes", {}),
    "pagedadamw32bit": ("bitsandbytes.optim", "PagedAdamW32bit", "bitsandbytes", {}),
    "sgdnesterov8bit": ("bitsandbytes.optim", "SGD8bit", "bitsandbytes", {"momentum": 0.9, "nesterov": True}),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", {}),
    "dadaptation": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadampreprint": ("dadaptation.experimental", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadam": ("dadaptation", "DAdaptAdam", "dadaptation", {}),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad", "dadaptation", {}),
    "dadaptadan": ("dadaptation", "DAdaptAdan", "dadaptation", {}),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation", {}),
    "dadaptlion": ("dadaptation", "DAdaptLion", "dadaptation", {}),
    "dadaptsgd": ("dadaptation", "DAdaptSGD", "dadaptation", {}),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers", {}),
}


def adafactor_uses_relative_step(optimizer_type: str, args: dict) -> bool:
    """AdaFactor finds its own step size unless relative_step=False (sd-scripts' default)."""
    return optimizer_type.lower() == "adafactor" and bool(args.get("relative_step", True) or args.get("warmup_init", False))


def _optimizer_class(optimizer_type: str, allowed_modules: Sequence[str]) -> tuple[type, dict]:
    """(class, default args) for a name or `module.Class`."""
    key = optimizer_type.lower()
    if key in _NAMED:
        module_name, class_name, package, defaults = _NAMED[key]
        return import_class(f"{module_name}.{class_name}", "optimizer", install=package, shown_as=optimizer_type), defaults
    if "." in optimizer_type:
        return import_class(optimizer_type, "optimizer", allowed_modules), {}
    if isinstance(getattr(torch.optim, optimizer_type, None), type):
        return getattr(torch.optim, optimizer_type), {}
    raise ValueError(
        f"unknown optimizer {optimizer_type!r}: use AdamW, AdamW8bit, Lion, Lion8bit, SGDNesterov, "
        "SGDNesterov8bit, Prodigy, DAdaptAdam (and the DAdapt family), AdaFactor, a torch.optim class "
        "name, or module.Class from a known optimizer package"
    )


def build_optimizer(optimizer_type: str, param_groups: list[dict], learning_rate: float, args: dict | None = None,
                    allowed_modules: Sequence[str] = ()) -> torch.optim.Optimizer:
    """An optimizer over `param_groups` (each with its own "lr"); `learning_rate` is the default.
    `allowed_modules` adds packages to the known ones for `module.Class` names (command line only)."""
    args = dict(args or {})
    key = optimizer_type.lower()
    if key == "adamw":
        return torch.optim.AdamW(param_groups, lr=learning_rate, **args)
    if key == "sgdnesterov":
        args.setdefault("momentum", 0.9)
        return torch.optim.SGD(param_groups, lr=learning_rate, nesterov=True, **args)
    cls, defaults = _optimizer_class(optimizer_type, allowed_modules)
    if not issubclass(cls, torch.optim.Optimizer):
        raise DisallowedClass(f"optimizer {optimizer_type!r} is not a torch.optim.Optimizer")
    if callable(getattr(cls, "eval", None)) and callable(getattr(cls, "train", None)):
        # schedule-free optimizers keep two weight sets; the saved one must be taken after eval()
        raise ValueError(f"optimizer {optimizer_type!r} is schedule-free: it needs train()/eval() switching around "
                         "every save and sample, which this trainer does not do; choose another optimizer")
    args = {**defaults, **args}
    if key == "adafactor":
        args.setdefault("relative_step", True)
        if args.get("warmup_init"):
            args["relative_step"] = True
        if args["relative_step"]:
            # relative step: AdaFactor's own schedule; the configured lr only seeds the
            # AdafactorSchedule that reports it (schedulers.py)
            args.setdefault("scale_parameter", True)
            param_groups = [{**g, "lr": None} for g in param_groups]
            return cls(param_groups, lr=None, **args)
    return cls(param_groups, lr=learning_rate, **args)
