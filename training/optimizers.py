"""Optimizers by sd-scripts' names (`optimizer_type`) with `optimizer_args`.

Built in: AdamW, Lion (implemented here), SGDNesterov, any torch.optim class by name and any
`module.Class`. From optional packages, with a message naming the package when it is
missing: AdamW8bit / Lion8bit / SGDNesterov8bit (bitsandbytes), Prodigy (prodigyopt),
DAdaptation* (dadaptation), AdaFactor (transformers).
"""
import importlib

import torch


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is
    the sign of an interpolation between momentum and gradient; decoupled weight decay."""

    def __init__(self, params, lr: float = 1e-4, betas=(0.9, 0.99), weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Lion: lr must be > 0, got {lr}")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"Lion: betas must be in [0, 1), got {betas}")
        super().__init__(params, dict(lr=lr, betas=tuple(betas), weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state[p]
                if not state:
                    state["exp_avg"] = torch.zeros_like(p)
                exp_avg = state["exp_avg"]
                if wd:
                    p.mul_(1 - lr * wd)
                update = exp_avg.mul(beta1).add_(grad, alpha=1 - beta1).sign_()
                p.add_(update, alpha=-lr)
                exp_avg.mul_(beta2).add_(grad, alpha=1 - beta2)
        return loss


# name (lower case) -> (module, class, package to install, default args)
_OPTIONAL = {
    "adamw8bit": ("bitsandbytes.optim", "AdamW8bit", "bitsandbytes", {}),
    "lion8bit": ("bitsandbytes.optim", "Lion8bit", "bitsandbytes", {}),
    "pagedadamw8bit": ("bitsandbytes.optim", "PagedAdamW8bit", "bitsandbytes", {}),
    "sgdnesterov8bit": ("bitsandbytes.optim", "SGD8bit", "bitsandbytes", {"momentum": 0.9, "nesterov": True}),
    "prodigy": ("prodigyopt", "Prodigy", "prodigyopt", {}),
    "dadaptation": ("dadaptation", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadampreprint": ("dadaptation", "DAdaptAdamPreprint", "dadaptation", {}),
    "dadaptadam": ("dadaptation", "DAdaptAdam", "dadaptation", {}),
    "dadaptadagrad": ("dadaptation", "DAdaptAdaGrad", "dadaptation", {}),
    "dadaptadan": ("dadaptation", "DAdaptAdan", "dadaptation", {}),
    "dadaptadanip": ("dadaptation.experimental", "DAdaptAdanIP", "dadaptation", {}),
    "dadaptlion": ("dadaptation", "DAdaptLion", "dadaptation", {}),
    "dadaptsgd": ("dadaptation", "DAdaptSGD", "dadaptation", {}),
    "adafactor": ("transformers.optimization", "Adafactor", "transformers", {}),
}


class OptimizerUnavailable(ImportError):
    pass


def _import_class(module_name: str, class_name: str, package: str, optimizer_type: str):
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise OptimizerUnavailable(
            f"optimizer {optimizer_type!r} needs the Python package '{package}', which is not installed "
            f"({e}). Install it into ComfyUI's Python (pip install {package}) or choose AdamW or Lion."
        ) from e
    return getattr(module, class_name)


def adafactor_uses_relative_step(optimizer_type: str, args: dict) -> bool:
    """AdaFactor finds its own step size unless relative_step=False (sd-scripts' default)."""
    return optimizer_type.lower() == "adafactor" and bool(args.get("relative_step", True) or args.get("warmup_init", False))


def build_optimizer(optimizer_type: str, param_groups: list[dict], learning_rate: float, args: dict | None = None) -> torch.optim.Optimizer:
    """An optimizer over `param_groups` (each with its own "lr"); `learning_rate` is the default."""
    args = dict(args or {})
    key = optimizer_type.lower()
    if key == "adamw":
        return torch.optim.AdamW(param_groups, lr=learning_rate, **args)
    if key == "lion":
        return Lion(param_groups, lr=learning_rate, **args)
    if key == "sgdnesterov":
        args.setdefault("momentum", 0.9)
        return torch.optim.SGD(param_groups, lr=learning_rate, nesterov=True, **args)
    if key in _OPTIONAL:
        module_name, class_name, package, defaults = _OPTIONAL[key]
        cls = _import_class(module_name, class_name, package, optimizer_type)
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
    if "." in optimizer_type:
        module_name, class_name = optimizer_type.rsplit(".", 1)
        cls = _import_class(module_name, class_name, module_name.split(".")[0], optimizer_type)
    elif hasattr(torch.optim, optimizer_type):
        cls = getattr(torch.optim, optimizer_type)
    else:
        raise ValueError(
            f"unknown optimizer {optimizer_type!r}: use AdamW, AdamW8bit, Lion, Lion8bit, SGDNesterov, "
            "SGDNesterov8bit, Prodigy, DAdaptAdam (and the DAdapt family), AdaFactor, a torch.optim class "
            "name, or module.Class"
        )
    return cls(param_groups, lr=learning_rate, **args)
