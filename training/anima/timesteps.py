"""Training timesteps for Anima as sd-scripts draws them (anima_train_network.py through
flux_train_utils.get_noisy_model_input_and_timesteps; its Anima defaults: timestep_sampling
"sigmoid", sigmoid_scale 1.0, discrete_flow_shift 1.0). Each method gives a noise level s in
(0, 1), the DiT's input being (1 - s) x0 + s n:

- "sigmoid": s = sigmoid(sigmoid_scale * z), z ~ N(0, 1) (logit-normal);
- "shift":   the same s, then shifted: s' = shift * s / (1 + (shift - 1) * s);
- "uniform": s ~ U(0, 1);
- "sigma":   an index i of sd-scripts' FlowMatchEulerDiscreteScheduler table (1000 entries,
             descending: s_i = shifted((1000 - i) / 1000); with shift 3 that is ComfyUI's own
             Anima schedule), i = floor(1000 u) with u drawn by weighting_scheme
             (compute_density_for_timestep_sampling): "logit_normal" u = sigmoid(N(logit_mean,
             logit_std)), "mode" u = 1 - v - mode_scale (cos^2(pi v / 2) - 1 + v), v ~ U(0, 1),
             otherwise u ~ U(0, 1). With the uniform density, min_timestep / max_timestep (ours;
             sd-scripts has none for flow models) keep i to 1000 - [min, max).

Loss weighting (sd-scripts' compute_loss_weighting_for_anima, any timestep_sampling): each
sample's loss times "sigma_sqrt" s^-2, "cosmap" 2 / (pi (1 - 2 s + 2 s^2)), otherwise 1.

The engine works with integer timesteps into the model's 1000-entry sigma table (ComfyUI's,
shift 3), which the loss weights, the control gap and the samples share; so each drawn s is
taken to the table's nearest entry (the table is at most 0.003 apart, near s = 0). sd-scripts'
"flux_shift" (a shift that grows with the picture's size) is not implemented and is refused.
"""
import math

import torch

METHODS = ("sigmoid", "shift", "uniform", "sigma")
WEIGHTING_SCHEMES = ("uniform", "none", "logit_normal", "mode", "sigma_sqrt", "cosmap")  # sd-scripts' choices
DENSITY_SCHEMES = ("logit_normal", "mode")  # they shape "sigma" sampling; sigma_sqrt / cosmap weight the loss


def shifted(s: torch.Tensor, shift: float) -> torch.Tensor:
    return s if shift == 1.0 else shift * s / (1 + (shift - 1) * s)


def check(method: str, min_timestep: int, max_timestep: int, weighting_scheme: str = "uniform") -> None:
    if method not in METHODS:
        extra = " (sd-scripts' flux_shift, a size-dependent shift, is not implemented)" if method == "flux_shift" else ""
        raise ValueError(f"timestep_sampling {method!r}{extra}: use one of {', '.join(METHODS)}")
    if weighting_scheme not in WEIGHTING_SCHEMES:
        raise ValueError(f"weighting_scheme {weighting_scheme!r}: use one of {', '.join(WEIGHTING_SCHEMES)}")
    if (min_timestep, max_timestep) != (0, 1000) and (method != "sigma" or weighting_scheme in DENSITY_SCHEMES):
        raise ValueError(f"min_timestep / max_timestep apply to timestep_sampling = \"sigma\" with a uniform density only "
                         f"(sd-scripts has no such limit for flow models); remove them or use sigma without "
                         f"weighting_scheme {weighting_scheme!r}")
    if weighting_scheme in DENSITY_SCHEMES and method != "sigma":
        raise ValueError(f"weighting_scheme {weighting_scheme!r} shapes timestep_sampling = \"sigma\" only (sd-scripts "
                         f"ignores it for {method!r}); use sigma, or remove it")


def density(n: int, scheme: str, logit_mean: float, logit_std: float, mode_scale: float,
            generator: torch.Generator) -> torch.Tensor:
    """u in [0, 1) as sd-scripts' compute_density_for_timestep_sampling draws it."""
    if scheme == "logit_normal":
        return torch.sigmoid(logit_mean + logit_std * torch.randn(n, generator=generator))
    v = torch.rand(n, generator=generator)
    if scheme == "mode":
        return 1 - v - mode_scale * (torch.cos(math.pi * v / 2) ** 2 - 1 + v)
    return v


def loss_weighting(scheme: str, levels: torch.Tensor) -> torch.Tensor:
    """Per-sample loss weights for noise levels s (sd-scripts' compute_loss_weighting_for_anima)."""
    if scheme == "sigma_sqrt":
        return levels.float() ** -2.0
    if scheme == "cosmap":
        return 2 / (math.pi * (1 - 2 * levels.float() + 2 * levels.float() ** 2))
    return torch.ones_like(levels, dtype=torch.float32)


def draw_noise_levels(n: int, method: str, sigmoid_scale: float, shift: float, generator: torch.Generator,
                      min_timestep: int = 0, max_timestep: int = 1000, weighting_scheme: str = "uniform",
                      logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> torch.Tensor:
    """(n,) noise levels s in (0, 1], float32 on the CPU, from the run's generator."""
    check(method, min_timestep, max_timestep, weighting_scheme)
    if method == "sigma":
        if weighting_scheme in DENSITY_SCHEMES:
            i = (density(n, weighting_scheme, logit_mean, logit_std, mode_scale, generator) * 1000).long().clamp(0, 999)
            return shifted((1000 - i).float() / 1000, shift)
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


def flow_metadata(method: str | None, sigmoid_scale: float, shift: float, weighting_scheme: str = "uniform",
                  logit_mean: float = 0.0, logit_std: float = 1.0, mode_scale: float = 1.29) -> dict[str, str]:
    """The ss_* keys sd-scripts' anima_train_network.py adds (update_metadata)."""
    return {"ss_timestep_sampling": method or "sigmoid", "ss_sigmoid_scale": str(float(sigmoid_scale)),
            "ss_discrete_flow_shift": str(float(shift)), "ss_weighting_scheme": weighting_scheme,
            "ss_logit_mean": str(float(logit_mean)), "ss_logit_std": str(float(logit_std)),
            "ss_mode_scale": str(float(mode_scale))}
