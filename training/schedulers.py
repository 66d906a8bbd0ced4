"""Learning-rate schedules by sd-scripts' names: transformers' own schedule functions (the ones
sd-scripts calls), each a multiplier of every group's lr, stepped once per optimizer step."""
from collections.abc import Sequence

import torch
from transformers.optimization import AdafactorSchedule, get_scheduler

from .class_allowlist import import_class

SCHEDULERS = ("constant", "constant_with_warmup", "linear", "cosine", "cosine_with_restarts", "polynomial", "adafactor")
POLYNOMIAL_LR_END = 1e-7  # sd-scripts' (and transformers') lr_end


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, total_steps: int, warmup_steps: int = 0,
                    num_cycles: int = 1, power: float = 1.0, args: dict | None = None, initial_lr: float = 0.0,
                    allowed_modules: Sequence[str] = ()):
    """A scheduler for `optimizer`. "adafactor" is AdaFactor's own (relative step) schedule,
    which only reports the lr; `module.Class` is a scheduler class from a known optimizer
    package (class_allowlist.py; `allowed_modules` adds packages), built with `args`."""
    if name == "adafactor":
        return AdafactorSchedule(optimizer, initial_lr)
    if "." in name:
        return import_class(name, "lr_scheduler", allowed_modules)(optimizer, **(args or {}))
    if name not in SCHEDULERS:
        raise ValueError(f"unknown lr_scheduler {name!r}: use one of {', '.join(SCHEDULERS[:-1])} or module.Class")
    specific = {}
    if name == "cosine_with_restarts":
        specific = {"num_cycles": num_cycles}
    elif name == "polynomial":
        if total_steps <= warmup_steps:  # transformers divides by the decay steps
            raise ValueError(f"lr_scheduler polynomial needs more steps ({total_steps}) than warmup steps ({warmup_steps})")
        specific = {"power": power, "lr_end": POLYNOMIAL_LR_END}
    return get_scheduler(name, optimizer, num_warmup_steps=warmup_steps, num_training_steps=total_steps,
                         scheduler_specific_kwargs=specific)
