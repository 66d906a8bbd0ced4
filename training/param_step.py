"""One trained weight's optimizer step on its own, and bf16 weights updated with stochastic rounding.

A weight's step is the optimizer's own step() with every param group narrowed to that weight, so
AdamW and AdaFactor keep their state, step counts and schedule exactly as in a whole step. The
fused backward pass (fused_backward.py) runs it inside each weight's gradient hook; full_bf16 runs
it weight by weight after the backward pass. A bf16 weight is stepped in fp32 and rounded back
stochastically (sd-scripts' copy_stochastic_): an update below bf16's resolution (2**-8 of the
weight) moves the weight by one bf16 step with the probability that makes the expected change the
fp32 update, instead of being rounded away at every step.
"""
import logging

import torch

log = logging.getLogger(__name__)

# optimizers whose update of a weight depends on that weight's gradient and state alone (by
# optimizer_type, lower case): only these may step weight by weight. Prodigy, D-Adaptation and
# the like estimate one step size from all weights at once.
PER_WEIGHT_OPTIMIZERS = ("adamw", "adafactor")


def stochastic_round_(target: torch.Tensor, source: torch.Tensor) -> None:
    """target (bf16) <- source (fp32), rounded up or down at random, with the probability that
    makes the expected value equal to source: a random 16-bit integer is added to the low half
    of the fp32 bits, then the low half is cut off (bf16 is fp32's high half). The draw comes
    from the device's global generator, which the training state saves and resumes."""
    noise = torch.randint(0, 1 << 16, source.shape, device=source.device, dtype=torch.int32)
    target.copy_((source.contiguous().view(torch.int32) + noise).bitwise_and_(-65536).view(torch.float32))


class ParamStepper:
    """Steps an optimizer's weights one at a time (step_param), or all of them (step)."""

    def __init__(self, optimizer: torch.optim.Optimizer, optimizer_type: str, stochastic_bf16: bool):
        """stochastic_bf16: bf16 weights are stepped in fp32 and rounded stochastically (full_bf16)."""
        self.optimizer = optimizer
        self.per_weight = optimizer_type.lower() in PER_WEIGHT_OPTIMIZERS
        self.stochastic = stochastic_bf16 and self.per_weight
        if stochastic_bf16 and not self.per_weight:
            log.warning("full_bf16 with %s: the optimizer updates the bf16 weights itself, with plain rounding; updates "
                        "below bf16's resolution are lost. AdamW and AdaFactor get stochastic rounding.", optimizer_type)
        # torch's optimizers keep a weight's moments in the weight's dtype; transformers' AdaFactor
        # keeps fp32 state for bf16 weights. Each keeps its own choice here.
        self.state_in_weight_dtype = type(optimizer).__module__.startswith("torch.optim")
        self.group_of = {p: g for g in optimizer.param_groups for p in g["params"]}

    def step(self) -> None:
        """The whole step: the optimizer's own, or weight by weight where bf16 weights need rounding."""
        if not self.stochastic:
            self.optimizer.step()
            return
        for p in [p for p in self.group_of if p.grad is not None]:
            self.step_param(p)

    def step_param(self, p: torch.nn.Parameter) -> None:
        """Step the weight p alone (its gradient is in p.grad; a bf16 weight's is consumed)."""
        groups = self.optimizer.param_groups
        kept = [g["params"] for g in groups]
        mine = self.group_of[p]
        for g in groups:
            g["params"] = [p] if g is mine else []
        try:
            if self.stochastic and p.dtype == torch.bfloat16:
                self._step_in_fp32(p)
            else:
                self.optimizer.step()
        finally:
            for g, params in zip(groups, kept):
                g["params"] = params

    def _step_in_fp32(self, p: torch.nn.Parameter) -> None:
        state = self.optimizer.state[p]
        low, grad = p.data, p.grad
        p.grad = None  # a gradient must match its weight's dtype: swap both
        p.data = low.float()
        p.grad = grad.float()
        shaped = [k for k, v in state.items() if self._weight_shaped(k, v, p)]
        for k in shaped:
            state[k] = state[k].float()
        self.optimizer.step()
        if self.state_in_weight_dtype:
            for k, v in list(state.items()):
                if self._weight_shaped(k, v, p):
                    state[k] = v.to(low.dtype)
        stochastic_round_(low, p.data)
        p.grad = None
        p.data = low

    @staticmethod
    def _weight_shaped(key, value, p) -> bool:
        """A moment of the weight (exp_avg, exp_avg_sq ...), not a step counter or factored statistics."""
        return key != "step" and torch.is_tensor(value) and value.is_floating_point() and value.shape == p.shape
