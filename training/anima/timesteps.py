"""Training timesteps for Anima as sd-scripts draws them (anima_train_network.py through
flux_train_utils.get_noisy_model_input_and_timesteps; its Anima defaults: timestep_sampling
"sigmoid", sigmoid_scale 1.0, discrete_flow_shift 1.0). Each method gives a noise level s in
(0, 1), the DiT's input being (1 - s) x0 + s n:

- "sigmoid": s = sigmoid(sigmoid_scale * z), z ~ N(0, 1) (logit-normal);
- "shift":   the same s, then shifted: s' = shift * s / (1 + (shift - 1) * s);
- "uniform": s ~ U(0, 1);
- "sigma":   a uniform index i in [min_timestep, max_timestep) of a 1000-step table,
             s = shifted((i + 1) / 1000) (sd-scripts' FlowMatchEulerDiscreteScheduler; with
             shift 3 that is ComfyUI's own Anima schedule).

The engine works with integer timesteps into the model's 1000-entry sigma table (ComfyUI's,
shift 3), which the loss weights, the control gap and the samples share; so each drawn s is
taken to the table's nearest entry (the table is at most 0.003 apart, near s = 0). sd-scripts'
"flux_shift" (a shift that grows with the picture's size) is not implemented and is refused.
"""
import torch

METHODS = ("sigmoid", "shift", "uniform", "sigma")


def shifted(s: torch.Tensor, shift: float) -> torch.Tensor:
    return s if shift == 1.0 else shift * s / (1 + (shift - 1) * s)


def check(method: str, min_timestep: int, max_timestep: int) -> None:
    if method not in METHODS:
        extra = " (sd-scripts' flux_shift, a size-dependent shift, is not implemented)" if method == "flux_shift" else ""
        raise ValueError(f"timestep_sampling {method!r}{extra}: use one of {', '.join(METHODS)}")
    if method != "sigma" and (min_timestep, max_timestep) != (0, 1000):
        raise ValueError(f"min_timestep / max_timestep apply to timestep_sampling = \"sigma\" only (sd-scripts ignores "
                         f"them for {method!r}); remove them or use sigma")


def draw_noise_levels(n: int, method: str, sigmoid_scale: float, shift: float, generator: torch.Generator,
                      min_timestep: int = 0, max_timestep: int = 1000) -> torch.Tensor:
    """(n,) noise levels s in (0, 1], float32 on the CPU, from the run's generator."""
    check(method, min_timestep, max_timestep)
    if method == "sigma":
        return shifted((torch.randint(min_timestep, max_timestep, (n,), generator=generator) + 1).float() / 1000, shift)
    if method == "uniform":
        return torch.rand(n, generator=generator)
    s = torch.sigmoid(sigmoid_scale * torch.randn(n, generator=generator))
    return shifted(s, shift) if method == "shift" else s


def nearest_timesteps(levels: torch.Tensor, sigmas: torch.Tensor) -> torch.Tensor:
    """Integer timesteps: the index of the increasing table `sigmas` nearest to each level."""
    table = sigmas.float().cpu()
    hi = torch.searchsorted(table, levels.float()).clamp(1, len(table) - 1)
    lo = hi - 1
    return torch.where((levels - table[lo]).abs() <= (table[hi] - levels).abs(), lo, hi)


def flow_metadata(method: str | None, sigmoid_scale: float, shift: float) -> dict[str, str]:
    """The ss_* keys sd-scripts' anima_train_network.py adds (update_metadata); the loss
    weighting options it also records are not implemented here and carry sd-scripts' defaults."""
    return {"ss_timestep_sampling": method or "sigmoid", "ss_sigmoid_scale": str(float(sigmoid_scale)),
            "ss_discrete_flow_shift": str(float(shift)), "ss_weighting_scheme": "none", "ss_logit_mean": "0.0",
            "ss_logit_std": "1.0", "ss_mode_scale": "1.29"}
