"""sd-scripts' fused_backward_pass: each trained weight's optimizer step runs in its gradient hook,
during the backward pass, and the gradient is freed at once, so at most a few gradients exist at
any time instead of one per weight (a full SDXL U-Net's are 5 GB in bf16).

Gradient accumulation (the step needs the sum of several backward passes), clipping by the global
norm (known only after the whole backward pass) and fp16 loss scaling (its overflow check too) are
refused in TrainConfig.validate (fused_backward_problems); so is more than one process.
"""
import torch

from .param_step import PER_WEIGHT_OPTIMIZERS, ParamStepper


def fused_backward_problems(optimizer_type: str, gradient_accumulation_steps: int, max_grad_norm: float,
                            mixed_precision: str) -> list[str]:
    """Why these options cannot run with fused_backward_pass (empty: they can)."""
    problems = []
    if optimizer_type.lower() not in PER_WEIGHT_OPTIMIZERS:
        problems.append(f"fused_backward_pass works with optimizer_type AdamW or AdaFactor, not {optimizer_type!r} "
                        "(it steps each weight on its own)")
    if gradient_accumulation_steps > 1:
        problems.append("fused_backward_pass does not work with gradient_accumulation_steps > 1 (as in sd-scripts): "
                        "each weight is stepped as soon as its gradient of one batch is ready")
    if max_grad_norm:
        problems.append("fused_backward_pass cannot clip gradients: the global norm is known only after the whole "
                        "backward pass, when the weights are already stepped (sd-scripts clips each tensor by its "
                        "own norm instead, which is another method). Set max_grad_norm = 0")
    if mixed_precision == "fp16":
        problems.append("fused_backward_pass cannot use fp16 loss scaling (its overflow check needs every gradient "
                        "before the step): use mixed_precision = \"bf16\"")
    return problems


class FusedBackward:
    """Hooks on every trained weight: step it (stepper.step_param) and free its gradient."""

    def __init__(self, stepper: ParamStepper, params: list[torch.nn.Parameter], world: int = 1):
        if world > 1:
            raise ValueError("fused_backward_pass with several processes is not implemented: the gradients must be "
                             "averaged over processes before each weight's step. Turn it off for torchrun runs")
        self.stepper = stepper
        self.handles = [p.register_post_accumulate_grad_hook(self._hook) for p in params if p.requires_grad]

    def _hook(self, p: torch.nn.Parameter) -> None:
        self.stepper.step_param(p)
        p.grad = None

    def remove(self) -> None:
        """Take the hooks off (the weights may belong to the graph's model, which outlives the run)."""
        for h in self.handles:
            h.remove()
        self.handles = []
