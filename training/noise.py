"""Training noise and timesteps, drawn from one CPU generator so a run is the same for a seed
on any device (and resumes exactly: the generator state is saved with the training state).

Formulas follow sd-scripts (library/custom_train_functions.py, train_util.py)."""
import torch
import torch.nn.functional as F


def _randn(shape, generator: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(shape, generator=generator, dtype=torch.float32).to(device=like.device)


def apply_noise_offset(latents: torch.Tensor, noise: torch.Tensor, offset: float, adaptive_scale: float,
                       generator: torch.Generator) -> torch.Tensor:
    """Offset noise: a per-sample, per-channel constant added to the noise. With
    adaptive_scale the offset grows with |mean| of each latent channel (clamped at 0)."""
    strength = torch.tensor(offset, device=latents.device)
    if adaptive_scale:
        strength = (offset + adaptive_scale * latents.float().mean(dim=(2, 3), keepdim=True).abs()).clamp(min=0.0)
    return noise + strength * _randn((latents.shape[0], latents.shape[1], 1, 1), generator, latents)


def pyramid_noise(noise: torch.Tensor, iterations: int, discount: float, generator: torch.Generator) -> torch.Tensor:
    """Multi-resolution noise: noise at ever coarser random scales, upsampled, weighted by
    discount**i and added; the sum is renormalised to unit std."""
    b, c, h, w = noise.shape
    out = noise.clone()
    for i in range(iterations):
        r = torch.rand((), generator=generator).item() * 2 + 2
        hn, wn = max(1, int(h / r**i)), max(1, int(w / r**i))
        coarse = _randn((b, c, hn, wn), generator, noise)
        out = out + F.interpolate(coarse, size=(h, w), mode="bilinear") * discount**i
        if hn == 1 or wn == 1:
            break
    return out / out.std()


def training_noise(latents: torch.Tensor, generator: torch.Generator, noise_offset: float = 0.0,
                   adaptive_noise_scale: float = 0.0, multires_iterations: int = 0,
                   multires_discount: float = 0.3) -> torch.Tensor:
    """The noise added to `latents` for one step, float32 on the latents' device."""
    noise = _randn(latents.shape, generator, latents)
    if noise_offset:
        noise = apply_noise_offset(latents, noise, noise_offset, adaptive_noise_scale, generator)
    if multires_iterations:
        noise = pyramid_noise(noise, multires_iterations, multires_discount, generator)
    return noise


def sample_timesteps(batch_size: int, min_timestep: int, max_timestep: int, generator: torch.Generator,
                     device) -> torch.Tensor:
    """Uniform integer timesteps in [min_timestep, max_timestep), one per sample."""
    return torch.randint(min_timestep, max_timestep, (batch_size,), generator=generator).to(device)
