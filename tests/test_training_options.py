"""Every training option path checked by its numbers: schedulers, optimizers, noise, losses,
sample prompt lines, the config file and the state file. No model needed."""
import math
import sys

import pytest
import torch
from lion_pytorch import Lion

from lllite_kit.training.config import TrainConfig, load_config, parse_kv_args
from lllite_kit.training.losses import huber_c, min_snr_weight, per_sample_loss, snr
from lllite_kit.training.noise import apply_noise_offset, pyramid_noise, sample_timesteps, training_noise
from lllite_kit.training.optimizers import OptimizerUnavailable, build_optimizer
from lllite_kit.training.prompts import parse_prompt_line, parse_prompts
from lllite_kit.training.schedulers import SCHEDULERS, build_scheduler
from lllite_kit.training.state import latest_state, load_state, save_state, state_path_for

# ---- schedulers ---------------------------------------------------------------------------


def _reference_multiplier(name, step, total_steps, warmup_steps=0, num_cycles=1, power=1.0, lr_init=1.0, lr_end=1e-7):
    """The diffusers/transformers formulas as this pack once wrote them by hand: the reference
    the transformers schedules must reproduce exactly."""
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
    raise AssertionError(name)


def _lr_sequence(name, lr, steps, **kw):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p], "lr": lr}], lr=lr)
    sched = build_scheduler(name, opt, **kw)
    seen = []
    for _ in range(steps):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return seen


@pytest.mark.parametrize("name", [s for s in SCHEDULERS if s != "adafactor"])
@pytest.mark.parametrize("total,warmup,cycles,power,lr", [(10, 2, 2, 2.0, 1e-3), (37, 0, 3, 1.0, 0.5), (25, 7, 1, 0.5, 2e-4)])
def test_transformers_schedules_equal_the_reference_formulas(name, total, warmup, cycles, power, lr):
    """Every lr the optimizer sees, for every scheduler name, including steps past the end."""
    got = _lr_sequence(name, lr, total + 3, total_steps=total, warmup_steps=warmup, num_cycles=cycles, power=power)
    want = [lr * _reference_multiplier(name, s, total, warmup, cycles, power, lr_init=lr) for s in range(total + 3)]
    assert got == pytest.approx(want, rel=1e-12, abs=1e-18)


@pytest.mark.parametrize("name,expected", [
    ("constant", {0: 1.0, 1: 1.0, 6: 1.0, 9: 1.0}),
    ("constant_with_warmup", {0: 0.0, 1: 0.5, 2: 1.0, 9: 1.0}),
    ("linear", {0: 0.0, 1: 0.5, 2: 1.0, 6: 0.5, 9: 0.125}),
    ("cosine", {1: 0.5, 2: 1.0, 6: 0.5}),
    ("cosine_with_restarts", {2: 1.0, 4: 0.5, 6: 1.0, 8: 0.5}),  # 2 cycles
    ("polynomial", {1: 0.5, 2: 1.0, 6: 0.25 + 0.75e-7}),  # power 2
])
def test_scheduler_known_values_with_warmup(name, expected):
    seq = _lr_sequence(name, 1.0, 10, total_steps=10, warmup_steps=2, num_cycles=2, power=2.0)
    for step, value in expected.items():
        assert seq[step] == pytest.approx(value, abs=1e-9), (name, step)


def test_scheduler_drives_every_param_group_lr():
    p1, p2 = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([{"params": [p1], "lr": 1.0}, {"params": [p2], "lr": 0.1}], lr=1.0)
    sched = build_scheduler("linear", opt, total_steps=4, warmup_steps=0)
    seen = []
    for _ in range(4):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert [v for pair in seen for v in pair] == pytest.approx([1.0, 0.1, 0.75, 0.075, 0.5, 0.05, 0.25, 0.025])
    with pytest.raises(ValueError, match="unknown lr_scheduler 'sawtooth'"):
        build_scheduler("sawtooth", opt, 4)
    with pytest.raises(ValueError, match=r"polynomial needs more steps \(3\) than warmup steps \(3\)"):
        build_scheduler("polynomial", opt, 3, warmup_steps=3)


def test_warmup_ratio_and_custom_scheduler_class():
    assert TrainConfig(lr_warmup_steps=0.1).warmup_steps(200) == 20
    assert TrainConfig(lr_warmup_steps=30).warmup_steps(200) == 30
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = build_scheduler("torch.optim.lr_scheduler.StepLR", opt, 10, args={"step_size": 1, "gamma": 0.5})
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == 0.5


# ---- optimizers ---------------------------------------------------------------------------


def _param(value=1.0):
    p = torch.nn.Parameter(torch.tensor([value]))
    return p


def test_lion_follows_its_update_rule():
    """Lion (Chen et al. 2023): sign of the beta1 interpolation, decoupled weight decay, momentum
    updated with beta2, as sd-scripts' lion-pytorch computes it."""
    p = _param(1.0)
    opt = build_optimizer("Lion", [{"params": [p], "lr": 0.1}], 0.1, {"betas": (0.9, 0.99), "weight_decay": 0.5})
    for grad, expected in ((0.5, 1.0 * (1 - 0.05) - 0.1), (-2.0, None)):
        p.grad = torch.tensor([grad])
        before = p.item()
        exp_avg = opt.state[p]["exp_avg"].item() if opt.state[p] else 0.0
        opt.step()
        want = before * (1 - 0.1 * 0.5) - 0.1 * math.copysign(1.0, exp_avg * 0.9 + grad * 0.1)
        assert p.item() == pytest.approx(want)
        if expected is not None:
            assert p.item() == pytest.approx(expected)
        assert opt.state[p]["exp_avg"].item() == pytest.approx(exp_avg * 0.99 + grad * 0.01)


@pytest.mark.parametrize("name,cls,check", [
    ("AdamW", torch.optim.AdamW, lambda o: o.defaults["weight_decay"] == 0.01),
    ("Lion", Lion, lambda o: o.defaults["betas"] == (0.9, 0.99)),
    ("SGDNesterov", torch.optim.SGD, lambda o: o.defaults["nesterov"] and o.defaults["momentum"] == 0.9),
    ("RMSprop", torch.optim.RMSprop, lambda o: o.defaults["lr"] == 0.01),
    ("torch.optim.Adagrad", torch.optim.Adagrad, lambda o: o.defaults["lr_decay"] == 0.5),
])
def test_optimizers_by_name_with_arguments(name, cls, check):
    args = {"AdamW": {"weight_decay": 0.01}, "torch.optim.Adagrad": {"lr_decay": 0.5}}.get(name, {})
    opt = build_optimizer(name, [{"params": [_param()], "lr": 0.01}], 0.01, args)
    assert type(opt) is cls and check(opt)


def test_a_missing_optional_package_is_named(monkeypatch):
    """As when bitsandbytes is not installed: the error names the optimizer and the pip package."""
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # import bitsandbytes raises ImportError
    monkeypatch.setitem(sys.modules, "bitsandbytes.optim", None)
    with pytest.raises(OptimizerUnavailable, match=r"'AdamW8bit' needs the Python package 'bitsandbytes'.*pip install bitsandbytes"):
        build_optimizer("AdamW8bit", [{"params": [_param()], "lr": 1e-4}], 1e-4)


def test_adafactor_relative_step_runs_its_own_schedule():
    from transformers.optimization import Adafactor

    p = _param()
    opt = build_optimizer("AdaFactor", [{"params": [p], "lr": 1e-3}], 1e-3, {"relative_step": True, "warmup_init": True})
    assert isinstance(opt, Adafactor) and opt.param_groups[0]["lr"] is None
    sched = build_scheduler("adafactor", opt, 10, initial_lr=1e-3)
    p.grad = torch.ones(1)
    opt.step()
    sched.step()
    assert 0 < sched.get_lr()[0] < 1e-3  # warmup_init: the relative step starts small
    fixed = build_optimizer("AdaFactor", [{"params": [_param()], "lr": 1e-3}], 1e-3, {"relative_step": False})
    assert fixed.param_groups[0]["lr"] == 1e-3


def test_unknown_optimizer_is_named():
    with pytest.raises(ValueError, match="unknown optimizer 'Adamm'"):
        build_optimizer("Adamm", [{"params": [_param()]}], 1e-4)
    with pytest.raises(ValueError, match="unknown optimizer 'lr_scheduler'"):  # a torch.optim module, not a class
        build_optimizer("lr_scheduler", [{"params": [_param()]}], 1e-4)


# ---- noise and timesteps ------------------------------------------------------------------


def test_noise_offset_adds_a_per_channel_constant_of_that_scale():
    latents = torch.zeros(4000, 4, 4, 4)
    g = torch.Generator().manual_seed(0)
    noise = apply_noise_offset(latents, torch.zeros_like(latents), 0.1, 0.0, g)
    assert torch.equal(noise, noise[:, :, :1, :1].expand_as(noise))  # constant over the image
    assert noise[:, :, 0, 0].std().item() == pytest.approx(0.1, rel=0.05)
    assert abs(noise.mean().item()) < 0.01


def test_adaptive_noise_offset_grows_with_the_latent_mean():
    latents = torch.zeros(4000, 2, 4, 4)
    latents[:, 1] = -2.0  # channel 1 mean |-2|
    g = torch.Generator().manual_seed(0)
    noise = apply_noise_offset(latents, torch.zeros_like(latents), 0.1, 0.05, g)
    assert noise[:, 0, 0, 0].std().item() == pytest.approx(0.1, rel=0.05)
    assert noise[:, 1, 0, 0].std().item() == pytest.approx(0.2, rel=0.05)  # 0.1 + 0.05 * 2
    clamped = apply_noise_offset(latents, torch.zeros_like(latents), 0.1, -1.0, g)  # negative: clamped at 0
    assert clamped[:, 1].abs().max().item() == 0.0


def test_multires_noise_is_unit_std_with_coarse_structure():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(64, 4, 32, 32, generator=g)
    noise = pyramid_noise(base, iterations=6, discount=0.8, generator=g)
    assert noise.std().item() == pytest.approx(1.0, abs=1e-4)
    # low frequencies: neighbouring pixels correlate, unlike white noise
    corr = lambda x: torch.corrcoef(torch.stack([x[..., :-1].flatten(), x[..., 1:].flatten()]))[0, 1].item()
    assert corr(noise) > 0.2 and abs(corr(base)) < 0.05


def test_noise_and_timesteps_are_reproducible_for_a_seed():
    lat = torch.randn(3, 4, 8, 8)
    a = training_noise(lat, torch.Generator().manual_seed(5), 0.05, 0.01)
    b = training_noise(lat, torch.Generator().manual_seed(5), 0.05, 0.01)
    assert torch.equal(a, b)
    t = sample_timesteps(10000, 200, 300, torch.Generator().manual_seed(1), "cpu")
    assert t.min().item() == 200 and t.max().item() == 299


def test_noise_offset_and_multires_exclude_each_other():
    with pytest.raises(ValueError, match="noise_offset and multires_noise_iterations"):
        TrainConfig(noise_offset=0.1, multires_noise_iterations=6)


# ---- losses -------------------------------------------------------------------------------

ALPHAS = torch.tensor([0.99, 0.5, 0.01])  # SNR 99, 1, 1/99


def test_min_snr_weights_for_eps_and_v():
    t = torch.tensor([0, 1, 2])
    assert snr(t, ALPHAS).tolist() == pytest.approx([99.0, 1.0, 1 / 99], rel=1e-5)
    assert min_snr_weight(t, ALPHAS, 5.0, v_prediction=False).tolist() == pytest.approx([5 / 99, 1.0, 1.0], rel=1e-5)
    assert min_snr_weight(t, ALPHAS, 5.0, v_prediction=True).tolist() == pytest.approx([5 / 100, 0.5, (1 / 99) / (1 + 1 / 99)], rel=1e-5)


def test_loss_types_per_sample():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.stack([torch.full((1, 2, 2), 0.01), torch.full((1, 2, 2), 10.0)])
    c = torch.tensor([0.1, 0.1])
    assert per_sample_loss(pred, target, "l2").tolist() == pytest.approx([1e-4, 100.0])
    assert per_sample_loss(pred, target, "l1").tolist() == pytest.approx([0.01, 10.0])
    huber = per_sample_loss(pred, target, "huber", c).tolist()
    assert huber[0] == pytest.approx(1e-4, rel=0.01)  # quadratic near 0
    assert huber[1] == pytest.approx(2 * 0.1 * (math.sqrt(100 + 0.01) - 0.1))  # linear far out
    assert per_sample_loss(pred, target, "smooth_l1", c).tolist()[1] == pytest.approx(2 * (math.sqrt(100.01) - 0.1))


def test_huber_c_schedules():
    t = torch.tensor([0, 2])
    assert huber_c(t, ALPHAS, 0.1, "constant").tolist() == pytest.approx([0.1, 0.1])
    exp = huber_c(torch.tensor([0, 3]), torch.ones(3), 0.1, "exponential").tolist()
    assert exp == pytest.approx([1.0, 0.1])  # from 1 at t=0 down to c at the last timestep
    sigma = math.sqrt(0.99 / 0.01)
    assert huber_c(t, ALPHAS, 0.1, "snr").tolist() == pytest.approx([0.9 / (1 + math.sqrt(0.01 / 0.99)) ** 2 + 0.1, 0.9 / (1 + sigma) ** 2 + 0.1])


# ---- sample prompts -------------------------------------------------------------------------


def test_prompt_line_options():
    p = parse_prompt_line("masterpiece, 1girl, upper body --n low quality, worst quality --w 768 --h 512 --d 42 --l 5.5 --s 28")
    assert (p.prompt, p.negative, p.width, p.height, p.seed, p.cfg, p.steps) == (
        "masterpiece, 1girl, upper body", "low quality, worst quality", 768, 512, 42, 5.5, 28)
    assert parse_prompt_line("# a comment") is None and parse_prompt_line("   ") is None
    d = parse_prompt_line("a cat", default_size=1024)
    assert (d.width, d.height, d.seed, d.negative) == (1024, 1024, None, "")


def test_prompt_errors_and_files(tmp_path):
    with pytest.raises(ValueError, match="--w needs a number"):
        parse_prompt_line("a cat --w wide")
    with pytest.raises(ValueError, match="height 500 must be a positive multiple of 8"):
        parse_prompt_line("a cat --h 500")
    f = tmp_path / "prompts.txt"
    f.write_text("# prompt 1\na dog --s 4\n\na cat --d 1\n", encoding="utf-8")
    assert [p.prompt for p in parse_prompts(str(f))] == ["a dog", "a cat"]
    assert [p.prompt for p in parse_prompts("x --s 2\ny --s 3")] == ["x", "y"]
    with pytest.raises(FileNotFoundError, match="missing.txt"):
        parse_prompts(str(tmp_path / "missing.txt"))


# ---- config file --------------------------------------------------------------------------


def test_kohya_config_toml_with_sections(tmp_path):
    f = tmp_path / "config.toml"
    f.write_text("""
[model_arguments]
pretrained_model_name_or_path = "sd_xl_base_1.0.safetensors"
[optimizer_arguments]
optimizer_type = "AdamW8bit"
optimizer_args = ["weight_decay=0.01", "betas=0.9,0.999"]
learning_rate = 1e-4
lr_scheduler = "cosine_with_restarts"
lr_scheduler_num_cycles = 3
[network_arguments]
network_dim = 16
network_alpha = 8
network_args = ["conv_dim=4", "down_lr_weight=1,1,0.5"]
[training_arguments]
mixed_precision = "bf16"
xformers = true
max_train_epochs = 10
""", encoding="utf-8")
    cfg = load_config(f, seed=7)
    assert cfg.pretrained_model_name_or_path == "sd_xl_base_1.0.safetensors"
    assert cfg.optimizer_args == {"weight_decay": 0.01, "betas": (0.9, 0.999)}
    assert cfg.network_args == {"conv_dim": "4", "down_lr_weight": "1,1,0.5"}
    assert (cfg.network_dim, cfg.lr_scheduler_num_cycles, cfg.mixed_precision, cfg.seed) == (16, 3, "bf16", 7)


def test_config_errors_name_the_key(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text('learning_rat = 1e-4\n', encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.toml: unknown training option\(s\) learning_rat"):
        load_config(f)
    with pytest.raises(FileNotFoundError, match="nope.toml"):
        load_config(tmp_path / "nope.toml")
    with pytest.raises(ValueError, match="mixed_precision must be no, fp16 or bf16"):
        TrainConfig(mixed_precision="fp8")
    assert parse_kv_args("mode=fast eps=1e-8") == {"mode": "fast", "eps": 1e-8}


# ---- state file -----------------------------------------------------------------------------


def test_state_file_round_trip_is_atomic(tmp_path):
    weights = tmp_path / "lora-step00000010.safetensors"
    path = state_path_for(weights)
    assert path.name == "lora-step00000010-state.pt"
    save_state(path, {"step": 10, "t": torch.arange(3)})
    state = load_state(path)
    assert state["step"] == 10 and torch.equal(state["t"], torch.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    assert latest_state(tmp_path, "lora") == path and latest_state(tmp_path, "other") is None
    path.write_bytes(b"garbage")
    with pytest.raises(ValueError, match=rf"{path.name}: refused"):  # garbage is refused, naming the file
        load_state(path)
