"""Helpers for the Anima tests: random v2 LLLite files, one DiT evaluation, sampling."""
import torch

import comfy.sample

from lllite_kit.lllite.anima.module import build_for_model
from lllite_kit.lllite.anima.weights import save_anima_lllite


def random_anima_lllite(model, path, seed=0, scale=0.2, in_channels=3, masked_input=False, **dims):
    """A v2 file with every parameter random (seeded), so the control changes the output clearly."""
    net = build_for_model(model.model.diffusion_model, in_channels=in_channels, inpaint_masked_input=masked_input,
                          cond_dim=dims.pop("cond_dim", 16), cond_emb_dim=dims.pop("cond_emb_dim", 24),
                          mlp_dim=dims.pop("mlp_dim", 32), **dims)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            if "norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * scale)
    save_anima_lllite(str(path), net)
    return net


def context(seed=0, tokens=7, batch=1):
    import tiny_anima

    return torch.randn(batch, tokens, tiny_anima.CONTEXT_DIM, generator=torch.Generator().manual_seed(seed))


def dit(model, x, sigma=0.6, cond_or_uncond=(0,), seed=0, grad=False):
    """One DiT evaluation (BaseModel.apply_model) with the ModelPatcher's patches; x (B, 16, 1, H, W)."""
    import comfy.model_management

    comfy.model_management.load_models_gpu([model])  # puts the model's weight patches (LoRA) in place
    b = x.shape[0]
    t = torch.full((b,), float(sigma))
    options = dict(model.model_options["transformer_options"])
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=t)
    with torch.inference_mode(not grad):
        return model.model.apply_model(x, t, c_crossattn=context(seed).expand(b, -1, -1), transformer_options=options)


def sample(model, latent, seed=1, steps=3, cfg=4.0):
    positive = [[context(1), {}]]
    negative = [[context(2), {}]]
    noise = comfy.sample.prepare_noise(latent, seed)
    return comfy.sample.sample(model, noise, steps, cfg, "euler", "simple", positive, negative, latent,
                               disable_pbar=True, seed=seed)
