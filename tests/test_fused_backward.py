"""Fused backward pass and full_bf16's stochastic rounding (training/fused_backward.py,
training/param_step.py) on the engine: the fused run gives the ordinary run's weights on the tiny
U-Net with at most one gradient alive at a time; bf16 weights stepped with stochastic rounding move
on average as fp32 weights do, where plain bf16 rounding stalls; options fused cannot honour are
refused by name."""
import pytest
import torch

from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.full_model import FullModelAdapter, kept_weights
from lllite_kit.training.param_step import ParamStepper
from training_helpers import ListData, eval_loss, no_metadata, unit_group_norms


@pytest.fixture(scope="module")
def sd15(tiny):
    with torch.inference_mode():
        model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
        unit_group_norms(model)
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, tm.family)
        text.precompute(ListData(2).captions)
        yield tm, text


def _train_unet(tm, text, out, **options):
    """Three steps of full U-Net training from the model's weights (put back afterwards); returns
    (the trained weights, the losses, the most gradients alive at once during the backward passes)."""
    named = dict(tm.diffusion_model.named_parameters())
    watched = list(named.values())[::len(named) // 16]  # a sample across the U-Net keeps the count cheap
    alive = [0]

    def spy(p):  # registered before the engine's hooks, so it runs first: p's gradient is still there
        alive[0] = max(alive[0], sum(w.grad is not None for w in watched if w is not p) + 1)

    tm.diffusion_model.requires_grad_(True)  # as the adapter will: hooks need it
    spies = [p.register_post_accumulate_grad_hook(spy) for p in named.values()]
    cfg = TrainConfig(**{"learning_rate": 1e-3, "max_train_steps": 3, "output_name": "fused", "max_grad_norm": 0.0,
                         "save_state": False, "seed": 5, **options})
    try:
        with kept_weights(tm.diffusion_model):
            adapter = FullModelAdapter(tm.patcher, None, None, tm.family)
            result = TrainingEngine(cfg, tm, text, adapter, ListData(n=2, bs=1, size=4), out, no_metadata).run()
            weights = {k: p.detach().clone() for k, p in named.items()}
    finally:
        for h in spies:
            h.remove()
    return weights, result.losses, alive[0]


@pytest.mark.parametrize("optimizer", ["AdamW", "AdaFactor"])
def test_fused_backward_gives_the_ordinary_steps_weights(sd15, tmp_path, optimizer):
    tm, text = sd15
    start = {k: p.detach().clone() for k, p in tm.diffusion_model.named_parameters()}
    plain, plain_losses, plain_alive = _train_unet(tm, text, tmp_path / "plain", optimizer_type=optimizer)
    fused, fused_losses, fused_alive = _train_unet(tm, text, tmp_path / "fused", optimizer_type=optimizer,
                                                   fused_backward_pass=True)
    moved = sum(not torch.equal(plain[k], start[k]) for k in start)
    assert moved > 0.9 * len(start)  # the steps changed (nearly) every weight
    torch.testing.assert_close(fused_losses, plain_losses, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fused, plain, rtol=1e-5, atol=1e-6)
    assert plain_alive > 10 and fused_alive == 1  # each gradient freed at once
    # the hooks left with the run: a later backward pass keeps its gradients and steps nothing
    tm.diffusion_model.requires_grad_(True)
    x = torch.randn(1, 4, 4, 4)
    tm.predict(x, torch.tensor([500]), text.encode(["a photo of thing 0"], tm.device)[0], None).square().mean().backward()
    params = list(tm.diffusion_model.parameters())
    assert all(p.grad is not None for p in params)
    assert all(torch.equal(p.detach(), start[k]) for k, p in tm.diffusion_model.named_parameters())
    tm.diffusion_model.requires_grad_(False)
    for p in params:
        p.grad = None


@pytest.mark.parametrize("options, message", [
    ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps > 1"),
    ({"max_grad_norm": 1.0}, "cannot clip gradients"),
    ({"optimizer_type": "Prodigy"}, "AdamW or AdaFactor, not 'Prodigy'"),
    ({"mixed_precision": "fp16"}, "fp16 loss scaling"),
])
def test_fused_backward_refuses_what_it_cannot_do_by_name(options, message):
    with pytest.raises(ValueError, match=f"fused_backward_pass.*{message}"):
        TrainConfig(**{"fused_backward_pass": True, "max_grad_norm": 0.0, **options})


def test_stochastic_rounding_moves_bf16_weights_as_the_fp32_update_would():
    """AdamW with a constant gradient moves every weight by lr per step: 1e-4, a 78th of one
    bf16 step (2**-7 in [1, 2)). Plain bf16 rounding drops every one of those updates; stochastic
    rounding makes whole bf16 steps whose mean over 16k weights is the fp32 change."""
    torch.manual_seed(0)
    start = (1.25 + 0.5 * torch.rand(128, 128)).to(torch.bfloat16).float()  # inside [1, 2): one bf16 step everywhere

    def train(dtype, stochastic):
        p = torch.nn.Parameter(start.to(dtype, copy=True))
        stepper = ParamStepper(torch.optim.AdamW([p], lr=1e-4, weight_decay=0.0), "AdamW", stochastic_bf16=stochastic)
        for _ in range(50):
            p.grad = torch.ones_like(p)
            stepper.step()
        return p.detach().float()

    fp32_change = (train(torch.float32, False) - start).mean().item()
    plain = train(torch.bfloat16, False)
    rounded = train(torch.bfloat16, True)
    assert fp32_change == pytest.approx(-50 * 1e-4, rel=1e-3)
    assert torch.equal(plain, start)  # stalled
    assert (rounded - start).mean().item() == pytest.approx(fp32_change, rel=0.05)
    steps = (rounded - start) / 2 ** -7
    assert torch.equal(steps, steps.round()) and (steps != 0).float().mean() > 0.3  # whole bf16 steps, often taken


def test_full_bf16_with_fused_backward_lowers_the_loss_of_a_whole_unet(sd15, tmp_path):
    """sd-scripts' memory set-up for a full fine-tune: bf16 weights and gradients, each weight
    stepped in its gradient hook with stochastic rounding."""
    tm, text = sd15
    data = ListData(n=2, bs=2, size=4)
    cfg = TrainConfig(learning_rate=3e-3, max_train_steps=3, output_name="bf16", max_grad_norm=0.0, save_state=False,
                      mixed_precision="bf16", full_bf16=True, fused_backward_pass=True, optimizer_type="AdaFactor",
                      optimizer_args={"relative_step": False, "scale_parameter": False})
    tm.compute_dtype = torch.bfloat16  # what trainable_model(mixed_precision="bf16") gives
    try:
        with kept_weights(tm.diffusion_model):
            before = eval_loss(tm, text, data)
            engine = TrainingEngine(cfg, tm, text, FullModelAdapter(tm.patcher, None, None, tm.family), data, tmp_path,
                                    no_metadata)
            engine.run()
            dtypes = {p.dtype for p in engine.params}
            after = eval_loss(tm, text, data)
    finally:
        tm.compute_dtype = torch.float32
    assert dtypes == {torch.bfloat16}
    assert after < 0.9 * before, (before, after)
