"""Helpers for the LLLite tests: random kohya-format networks with a measurable effect, direct
U-Net calls and sampling on the tiny models, and an independent reference of kohya's module
math (plain torch on the file's tensors, applied with forward pre-hooks on the U-Net's Linears)
that shares no code with lllite/."""
import torch
import torch.nn.functional as F

import comfy.sample
import comfy.samplers
from lllite_kit.lllite.module import build_network, layout_for

E, R = 8, 16  # tiny cond_emb_dim / network_dim

# The real SDXL U-Net (ComfyUI's detected config for SDXL base), for layout counts and benchmarks.
FULL_SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}


def full_sdxl_unet(device="cpu", dtype=torch.float32):
    """Full-size SDXL UNetModel with uninitialised weights (comfy ops skip init): for shapes and speed."""
    import comfy.ops
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    return UNetModel(**FULL_SDXL_UNET, dtype=dtype, device=device, operations=comfy.ops.disable_weight_init)


@torch.no_grad()
def random_network(model, family="sdxl", seed=0, scale=0.1, cond_emb_dim=E, mlp_dim=R, name="test-lllite",
                   output_blocks=False):
    """kohya's layout (output_blocks: with the decoder's transformers) for the tiny model with
    every weight N(0, scale^2), the up projection included (kohya's init zeroes it, which would
    make the module a no-op)."""
    net = build_network(model.model.diffusion_model, layout_for(family, output_blocks), cond_emb_dim, mlp_dim, name)
    g = torch.Generator().manual_seed(seed)
    for _, p in sorted(net.named_parameters()):
        p.copy_(torch.randn(p.shape, generator=g) * scale)
    return net


def conditioning(family="sdxl", seed=0, tokens=7, batch=1):
    """(positive, negative) CONDITIONING for the tiny models without building a CLIP."""
    import tiny_models

    g = torch.Generator().manual_seed(seed)
    dim = tiny_models.SDXL_CONTEXT_DIM if family == "sdxl" else tiny_models.SD15_CONTEXT_DIM
    pooled = tiny_models.CLIP_G["projection_dim"]

    def one():
        extra = {"pooled_output": torch.randn(batch, pooled, generator=g)} if family == "sdxl" else {}
        return [[torch.randn(batch, tokens, dim, generator=g), extra]]

    return one(), one()


def sample(model, latent, seed=1, steps=4, cfg=5.0, sampler="euler", scheduler="normal", family="sdxl",
           start_step=None, last_step=None, add_noise=True, force_full_denoise=True, positive=None, negative=None):
    """comfy.sample.sample as KSampler/KSamplerAdvanced call it, on a latent tensor."""
    if positive is None:
        positive, negative = conditioning(family)
    noise = comfy.sample.prepare_noise(latent, seed) if add_noise else torch.zeros_like(latent)
    return comfy.sample.sample(model, noise, steps, cfg, sampler, scheduler, positive, negative, latent,
                               disable_noise=not add_noise, start_step=start_step, last_step=last_step,
                               force_full_denoise=force_full_denoise, disable_pbar=True, seed=seed)


def unet(model, x, sigma=5.0, cond_or_uncond=(0,), family="sdxl", seed=0, grad=False):
    """One U-Net evaluation (BaseModel.apply_model) with the ModelPatcher's patches, as the sampler
    calls it for a batch made of len(cond_or_uncond) chunks; in inference mode as graphs run,
    or with autograd (grad=True) as a training node would."""
    import tiny_models

    g = torch.Generator().manual_seed(seed)
    b = x.shape[0]
    dim = tiny_models.SDXL_CONTEXT_DIM if family == "sdxl" else tiny_models.SD15_CONTEXT_DIM
    context = torch.randn(1, 7, dim, generator=g).expand(b, -1, -1)
    extra = {}
    if family == "sdxl":
        extra["y"] = (torch.randn(1, model.model.adm_channels, generator=g) * 0.1).expand(b, -1)
    t = torch.full((b,), float(sigma))
    options = dict(model.model_options["transformer_options"])
    options.update(cond_or_uncond=list(cond_or_uncond), sigmas=t)
    with torch.inference_mode(not grad):
        return model.model.apply_model(x, t, c_crossattn=context, transformer_options=options, **extra)


# ---- independent reference of kohya's module math --------------------------------------------

def _reference_embedding(w, guide):
    """conditioning1 of kohya's module from its raw tensors: conv k4 s4, ReLU, then by depth."""
    x = F.conv2d(guide, w["conditioning1.0.weight"], w["conditioning1.0.bias"], stride=4)
    x = F.conv2d(torch.relu(x), w["conditioning1.2.weight"], w["conditioning1.2.bias"], stride=w["conditioning1.2.weight"].shape[-1])
    if "conditioning1.4.weight" in w:
        x = F.conv2d(torch.relu(x), w["conditioning1.4.weight"], w["conditioning1.4.bias"], stride=2)
    b, e = x.shape[:2]
    return x.view(b, e, -1).permute(0, 2, 1)  # (b, h*w, E), row-major


def _reference_module(w, emb, multiplier):
    def forward(x):
        cond = emb.expand(x.shape[0] // emb.shape[0], *emb.shape).reshape(x.shape[0], *emb.shape[1:]) if emb.shape[0] != x.shape[0] else emb
        cx = torch.relu(F.linear(x, w["down.0.weight"], w["down.0.bias"]))
        cx = torch.relu(F.linear(torch.cat([cond, cx], dim=2), w["mid.0.weight"], w["mid.0.bias"]))
        return F.linear(cx, w["up.0.weight"], w["up.0.bias"]) * multiplier
    return forward


def hook_reference(diffusion_model, networks):
    """Forward pre-hooks that add kohya's module outputs for [(state_dict, guide in [-1,1], multiplier)]
    to the inputs of the U-Net Linears, every network on the original input. Returns the handles."""
    by_name = {"lllite_unet_" + n.replace(".", "_"): m for n, m in diffusion_model.named_modules()}
    forwards = {}
    for state_dict, guide, multiplier in networks:
        grouped = {}
        for key, tensor in state_dict.items():
            name, param = key.split(".", 1)
            grouped.setdefault(name, {})[param] = tensor.float()
        for name, w in grouped.items():
            forwards.setdefault(name, []).append(_reference_module(w, _reference_embedding(w, guide), multiplier))
    handles = []
    for name, fs in forwards.items():
        def pre_hook(module, args, fs=fs):
            x = args[0]
            return (x + sum(f(x) for f in fs),) + tuple(args[1:])
        handles.append(by_name[name].register_forward_pre_hook(pre_hook))
    return handles
