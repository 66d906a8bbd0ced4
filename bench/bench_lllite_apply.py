"""Sampling step time with ControlNet-LLLite: the bare model vs one LLLite vs two LLLites on the
same model in one run, interleaved (bare one two two one bare ...), medians, overhead ratios.

    .venv/bin/python bench/bench_lllite_apply.py                 # tiny SDXL-layout model, 128x128 (< 1 min on CPU)
    .venv/bin/python bench/bench_lllite_apply.py --full-sdxl --resolution 1024 --dtype fp16   # on a GPU
    .venv/bin/python bench/bench_lllite_apply.py --smoke         # seconds: smallest settings

--full-sdxl builds the full-size SDXL U-Net with random weights (speed does not depend on their
values) and LLLites of kohya's released size (cond_emb_dim 32, network_dim 64, 136 modules).
Goal on a GPU: at most 1.03x per LLLite; the guide embedding is computed once, not per step
(the count of embedding computations during the timed steps is printed)."""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def _conditioning(context_dim, pooled_dim, tokens):
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, tokens, context_dim, generator=g), {"pooled_output": torch.randn(1, pooled_dim, generator=g)}]]  # noqa: E731
    return one(), one()


def _random_lllite(model, cond_emb_dim, mlp_dim, seed, output_blocks=False):
    from lllite_kit.lllite.module import build_network, layout_for

    network = build_network(model.model.diffusion_model, layout_for("sdxl", output_blocks), cond_emb_dim, mlp_dim,
                            f"bench{seed}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(network.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return network.to(torch.device("cpu"))


def sdxl_setup(opts, build_tiny):
    """(resolution, steps, MODEL, positive, negative, LLLite (cond_emb_dim, mlp_dim)) for the
    apply benches: the full-size SDXL U-Net with kohya's released LLLite size, or build_tiny's
    tiny SDXL-layout model."""
    import tiny_models

    if opts.full_sdxl:
        positive, negative = _conditioning(benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM, 77)
        return opts.resolution or 1024, opts.steps or 8, benchlib.build_full_sdxl(opts.dtype), positive, negative, (32, 64)
    model = build_tiny("sdxl", seed=0, dtype=benchlib.torch_dtype(opts.dtype))
    positive, negative = _conditioning(tiny_models.SDXL_CONTEXT_DIM, tiny_models.CLIP_G["projection_dim"], 77)
    return opts.resolution or 128, opts.steps or 3, model, positive, negative, (8, 16)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net (random weights) instead of the tiny one")
    opts = benchlib.apply_options(parser)

    benchlib.bootstrap(cpu=opts.cpu)
    import comfy.sample

    from lllite_kit.lllite.module import LLLiteModule
    from lllite_kit.lllite.patch import apply_lllite

    import tiny_models

    resolution, steps, model, positive, negative, dims = sdxl_setup(opts, tiny_models.build_model)
    guides = [torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    canny, depth = (_random_lllite(model, *dims, seed) for seed in (1, 2))
    variants = {
        "bare": model,
        "one LLLite": apply_lllite(model, canny, guides[0], 1.0),
        "two LLLites": apply_lllite(apply_lllite(model, canny, guides[0], 1.0), depth, guides[1], 0.8),
    }
    latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
    noise = comfy.sample.prepare_noise(latent, 1)
    embeds = [0]
    embed = LLLiteModule.embed
    LLLiteModule.embed = lambda self, g: embeds.__setitem__(0, embeds[0] + 1) or embed(self, g)
    fns = {name: lambda m=m: benchlib.sampler_step_time(m, noise, latent, steps, 7.0, "normal", positive, negative)
           for name, m in variants.items()}
    for fn in fns.values():  # warm-up: model load, kernels, the guide embeddings (not counted below)
        fn()
    embeds[0] = 0
    times = benchlib.interleaved(fns, opts.rounds, warmup=0, measure=lambda fn: fn())

    model_name = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net"
    print(f"machine: {benchlib.machine()}")
    print(f"{model_name}, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, euler {steps} steps x "
          f"{2 * opts.rounds} runs per variant, LLLite E{dims[0]}/R{dims[1]} (136 modules)")
    benchlib.apply_report(times, "goal on GPU: <= 1.03")
    print(f"guide embedding computations during the timed steps: {embeds[0]} (0 = computed once, reused)")


if __name__ == "__main__":
    main()
