"""Learning-rate schedules by sd-scripts' names (the diffusers/transformers formulas), all as a
multiplier of each group's lr, stepped once per optimizer step."""
import importlib
import math

import torch
from torch.optim.lr_scheduler import LambdaLR

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor")


def lr_multiplier(name: str, step: int, total_steps: int, warmup_steps: int = 0, num_cycles: int = 1,
                  power: float = 1.0, lr_init: float = 1.0, lr_end: float = 1e-7) -> float:
    """The factor on the base lr after `step` optimizer steps."""
    if name == "constant":
        return 1.0
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    if name == "constant_with_warmup":
        return 1.0
    decay_steps = max(1, total_steps - warmup_steps)
    progress = (step - warmup_steps) / decay_steps
    if name == "linear":
        return max(0.0, (total_steps - step) / decay_steps)
    if name == "cosine":
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))
    if name == "cosine_with_restarts":
        if progress >= 1.0:
            return 0.0
        return max(0.0, 0.5 * (1.0 + math.cos(math.pi * ((num_cycles * progress) % 1.0))))
    if name == "polynomial":
        if step > total_steps:
            return lr_end / lr_init
        return ((lr_init - lr_end) * (1 - progress) ** power + lr_end) / lr_init
    raise ValueError(f"unknown lr_scheduler {name!r}: use one of {', '.join(SCHEDULERS[:-1])} or module.Class")


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    num_cycles: int = 1, power: float = 1.0, args: dict | None = None, initial_lr: float = 0.0):
    """A scheduler for `optimizer`. "adafactor" is AdaFactor's own (relative step) schedule,
    which only reports the lr; `module.Class` is any scheduler class, built with `args`."""
    if name == "adafactor":
        from transformers.optimization import AdafactorSchedule

        return AdafactorSchedule(optimizer, initial_lr)
    if "." in name:
        module_name, class_name = name.rsplit(".", 1)
        return getattr(importlib.import_module(module_name), class_name)(optimizer, **(args or {}))
    lr_init = optimizer.defaults.get("lr") or 1.0
    lr_multiplier(name, 0, total_steps)  # unknown names fail here, not at the first step
    return LambdaLR(optimizer, lambda step: lr_multiplier(name, step, total_steps, warmup_steps, num_cycles, power, lr_init))
