"""Anima sampling step time with Anima LLLite v2: the bare DiT vs one LLLite vs two LLLites in
one run, interleaved (bare one two two one bare ...), medians, overhead ratios.

    .venv/bin/python bench/bench_anima_lllite_apply.py               # tiny Anima (tests/tiny_nodes), 128x128, CPU
    .venv/bin/python bench/bench_anima_lllite_apply.py --full-anima --resolution 1024 --dtype bf16   # on a GPU
    .venv/bin/python bench/bench_anima_lllite_apply.py --smoke       # seconds: smallest settings

--full-anima builds the full-size Anima DiT (2048 wide, 28 blocks, random weights: speed does
not depend on their values) with LLLites on all 5 targets of every block (140 modules).
Goal on a GPU: at most 1.05x per LLLite."""
import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def full_anima(dtype):
    import tiny_anima

    config = dict(tiny_anima.ANIMA_DIT, model_channels=2048, num_blocks=28, num_heads=16, crossattn_emb_channels=1024,
                  adaln_lora_dim=256)
    return tiny_anima.build_anima(seed=0, dtype=dtype, dit_config=config)


def _random_lllite(model, dims, seed):
    from lllite_kit.lllite.anima.module import build_for_model

    net = build_for_model(model.model.diffusion_model, cond_dim=dims[0], cond_emb_dim=dims[0], mlp_dim=dims[1], name=f"bench{seed}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(net.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return net


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-anima", action="store_true", help="full-size Anima DiT (random weights) instead of the tiny one")
    opts = benchlib.apply_options(parser)

    benchlib.bootstrap(cpu=opts.cpu)
    import comfy.sample

    import tiny_anima
    from lllite_kit.lllite.patch import apply_lllite

    dtype = benchlib.torch_dtype(opts.dtype)
    if opts.full_anima:
        resolution, steps, dims = opts.resolution or 1024, opts.steps or 8, (32, 64)
        model, context_dim = full_anima(dtype), 1024
    else:
        resolution, steps, dims = opts.resolution or 128, opts.steps or 3, (16, 32)
        model, context_dim = tiny_anima.build_anima(seed=0, dtype=dtype), tiny_anima.CONTEXT_DIM
    g = torch.Generator().manual_seed(0)
    positive, negative = ([[torch.randn(1, 32, context_dim, generator=g), {}]] for _ in range(2))
    guides = [torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(s)) for s in (1, 2)]
    a, b = (_random_lllite(model, dims, seed) for seed in (1, 2))
    variants = {
        "bare": model,
        "one LLLite": apply_lllite(model, a, guides[0], 1.0),
        "two LLLites": apply_lllite(apply_lllite(model, a, guides[0], 1.0), b, guides[1], 0.8),
    }
    latent = torch.zeros(1, 16, 1, resolution // 8, resolution // 8)
    noise = comfy.sample.prepare_noise(latent, 1)

    fns = {name: lambda m=m: benchlib.sampler_step_time(m, noise, latent, steps, 4.0, "simple", positive, negative)
           for name, m in variants.items()}
    times = benchlib.interleaved(fns, opts.rounds, measure=lambda fn: fn())  # warm-up call: model load, kernels

    print(f"machine: {benchlib.machine()}")
    print(f"{'full-size' if opts.full_anima else 'tiny'} Anima DiT, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, "
          f"euler {steps} steps x {2 * opts.rounds} runs per variant, LLLite E{dims[0]}/R{dims[1]} ({len(a.targets)} modules)")
    benchlib.apply_report(times, "goal on GPU: <= 1.05")


if __name__ == "__main__":
    main()
