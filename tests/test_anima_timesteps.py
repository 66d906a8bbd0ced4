"""Anima training timesteps drawn as sd-scripts draws them (timestep_sampling sigmoid / shift /
uniform / sigma, sigmoid_scale, discrete_flow_shift; weighting_scheme logit_normal / mode as the
density of "sigma", sigma_sqrt / cosmap as loss weights): the distribution matches the formula,
the engine uses it, and options that do not apply are refused by name."""
import math

import pytest
import torch
from safetensors import safe_open

from lllite_kit.training.anima.timesteps import draw_noise_levels, loss_weighting, nearest_timesteps
from lllite_kit.training.config import TrainConfig

N = 20000


def _phi(z: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(z / math.sqrt(2)))


def _logit(x: torch.Tensor) -> torch.Tensor:
    return torch.log(x / (1 - x))


def _cdf(method: str, scale: float, shift: float, x: torch.Tensor) -> torch.Tensor:
    """P(s <= x) from the formulas: s = sigmoid(scale z) (logit-normal), shifted s' =
    shift s / (1 + (shift - 1) s), whose inverse is s = s' / (shift - (shift - 1) s')."""
    if method == "uniform":
        return x
    if method == "shift":
        x = x / (shift - (shift - 1) * x)
    return _phi(_logit(x) / scale)


def _ks(samples: torch.Tensor, cdf) -> float:
    s, _ = samples.sort()
    empirical = torch.arange(1, len(s) + 1) / len(s)
    return (empirical - cdf(s)).abs().max().item()


@pytest.mark.parametrize("method,scale,shift", [("sigmoid", 1.0, 1.0), ("sigmoid", 2.0, 1.0), ("shift", 1.0, 3.0),
                                                ("shift", 1.5, 2.0), ("uniform", 1.0, 1.0)])
def test_noise_levels_follow_the_formula(method, scale, shift):
    levels = draw_noise_levels(N, method, scale, shift, torch.Generator().manual_seed(0))
    assert _ks(levels, lambda x: _cdf(method, scale, shift, x)) < 0.015  # KS at n=20000: ~0.0096 at 1 %
    other = draw_noise_levels(N, method, scale * 1.3, shift + 0.5, torch.Generator().manual_seed(0))
    if method != "uniform":  # the test can tell parameters apart
        assert _ks(other, lambda x: _cdf(method, scale, shift, x)) > 0.03


def test_sigma_method_is_a_uniform_index_into_the_shifted_table():
    levels = draw_noise_levels(N, "sigma", 1.0, 3.0, torch.Generator().manual_seed(1), min_timestep=200, max_timestep=800)
    index = levels * 1000 / (3 - 2 * levels) - 1  # back through the shift: the integer drawn
    assert torch.allclose(index, index.round(), atol=1e-2) and index.min() >= 199.99 and index.max() <= 799.01
    assert _ks(index.round(), lambda x: ((x - 200 + 1) / 600).clamp(0, 1)) < 0.015


@pytest.mark.parametrize("mean,std", [(1.0, 0.8), (-0.5, 1.2)])
def test_sigma_with_logit_normal_density(mean, std):
    """u = sigmoid(N(mean, std)) indexes sd-scripts' descending table: s = 1 - floor(1000 u) / 1000
    (shift 1), so s is logit-normal with mean -mean."""
    levels = draw_noise_levels(N, "sigma", 1.0, 1.0, torch.Generator().manual_seed(3), weighting_scheme="logit_normal",
                               logit_mean=mean, logit_std=std)
    assert _ks(levels, lambda x: _phi((_logit(x) + mean) / std)) < 0.015
    assert _ks(levels, lambda x: _phi((_logit(x) - mean) / std)) > 0.1  # the table's direction matters


def test_sigma_with_mode_density():
    """u = 1 - v - c (cos^2(pi v / 2) - 1 + v), v ~ U(0, 1): s = 1 - u = g(v) with g increasing,
    so the q-quantile of s is g(q)."""
    c = 1.29
    levels = draw_noise_levels(N, "sigma", 1.0, 1.0, torch.Generator().manual_seed(4), weighting_scheme="mode",
                               mode_scale=c)
    q = (torch.arange(N) + 0.5) / N
    g = q + c * (torch.cos(math.pi * q / 2) ** 2 - 1 + q)
    assert (levels.sort().values - g).abs().max() < 0.02
    assert (levels.sort().values - q).abs().max() > 0.1  # not the uniform density


def test_loss_weighting_formulas():
    s = torch.tensor([0.1, 0.5, 0.9])
    assert torch.allclose(loss_weighting("sigma_sqrt", s), torch.tensor([100.0, 4.0, 1 / 0.81]))
    assert torch.allclose(loss_weighting("cosmap", s), 2 / (math.pi * torch.tensor([0.82, 0.5, 0.82])))
    for scheme in ("uniform", "none", "logit_normal", "mode"):  # these weight nothing (sd-scripts: ones)
        assert torch.equal(loss_weighting(scheme, s), torch.ones(3))


def test_the_engine_draws_them_on_the_anima_schedule(monkeypatch, tmp_path):
    """One training step on the tiny Anima: the engine takes its timesteps from the schedule's
    draw (sd-scripts' formula, taken to the nearest entry of ComfyUI's shift-3 sigma table)."""
    import tiny_anima
    from lllite_kit.training import session
    from lllite_kit.training.anima.model import FlowSchedule
    from lllite_kit.training.data import DatasetConfig, SubsetConfig, items_from_tensors

    model = tiny_anima.build_anima(0)
    schedule = FlowSchedule(model.get_model_object("model_sampling"))
    levels = draw_noise_levels(N, "shift", 1.0, 3.0, torch.Generator().manual_seed(2))
    table = schedule.sigmas[nearest_timesteps(levels, schedule.sigmas)]
    assert (table - levels).abs().max() <= 0.0016  # half the table's widest gap (3/1000 near s = 0)
    assert _ks(table, lambda x: _cdf("shift", 1.0, 3.0, x)) < 0.015

    drawn, weighted = [], []
    draw, weigh = FlowSchedule.draw_timesteps, FlowSchedule.loss_weight
    monkeypatch.setattr(FlowSchedule, "draw_timesteps", lambda self, *a: drawn.append(draw(self, *a)) or drawn[-1])
    monkeypatch.setattr(FlowSchedule, "loss_weight", lambda self, t, cfg: weighted.append((t, weigh(self, t, cfg))) or weighted[-1][1])
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a disc", images))],
                            resolution=(32, 32), batch_size=2)
    cfg = TrainConfig(max_train_steps=1, seed=5, output_name="anima_ts", timestep_sampling="shift", discrete_flow_shift=3.0,
                      weighting_scheme="cosmap", cond_emb_dim=8, network_dim=8)
    result = session.train_lllite(cfg, model, tiny_anima.build_anima_clip(0), tiny_anima.build_anima_vae(0), [dataset],
                                  output_dir=tmp_path, holdout=0)
    (t,) = drawn  # one step, one draw for its batch of 2
    assert t.dtype == torch.long and t.shape == (2,) and 0 <= t.min() and t.max() < 1000
    ((tw, w),) = weighted  # the step's loss was weighted at its own noise levels
    assert torch.equal(tw, t) and torch.allclose(w, loss_weighting("cosmap", schedule.sigmas[t.cpu()]))
    with safe_open(str(result.final_path), "pt") as f:  # recorded as sd-scripts' anima_train_network.py does
        meta = f.metadata()
    assert (meta["ss_timestep_sampling"], meta["ss_sigmoid_scale"], meta["ss_discrete_flow_shift"]) == ("shift", "1.0", "3.0")
    assert meta["ss_weighting_scheme"] == "cosmap" and meta["ss_mode_scale"] == "1.29"


@pytest.mark.parametrize("changes,family,message", [
    ({"timestep_sampling": "sigmoid"}, "sdxl", "for flow-matching models"),
    ({"discrete_flow_shift": 3.0}, "sd15", "for flow-matching models"),
    ({"timestep_sampling": "flux_shift"}, "anima", "flux_shift, a size-dependent shift, is not implemented"),
    ({"timestep_sampling": "logit"}, "anima", "use one of sigmoid, shift, uniform, sigma"),
    ({"min_timestep": 100}, "anima", "apply to timestep_sampling = \"sigma\" with a uniform density only"),
    ({"timestep_sampling": "sigma", "weighting_scheme": "logit_normal", "max_timestep": 900}, "anima", "uniform density only"),
    ({"weighting_scheme": "logit_normal"}, "anima", "shapes timestep_sampling = \"sigma\" only"),
    ({"weighting_scheme": "lognorm"}, "anima", "use one of uniform, none, logit_normal, mode, sigma_sqrt, cosmap"),
    ({"weighting_scheme": "cosmap"}, "sdxl", "for flow-matching models"),
])
def test_options_that_do_not_apply_are_refused_by_name(changes, family, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(**changes).check_model_family(family)
    TrainConfig(timestep_sampling="sigma", min_timestep=100).check_model_family("anima")
    TrainConfig().check_model_family("sdxl")
