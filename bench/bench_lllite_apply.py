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
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def _conditioning(context_dim, pooled_dim, tokens):
    g = torch.Generator().manual_seed(0)
    one = lambda: [[torch.randn(1, tokens, context_dim, generator=g), {"pooled_output": torch.randn(1, pooled_dim, generator=g)}]]  # noqa: E731
    return one(), one()


def _random_lllite(model, cond_emb_dim, mlp_dim, seed):
    from lllite_kit.lllite.module import SDXL_LAYOUT, build_network

    network = build_network(model.model.diffusion_model, SDXL_LAYOUT, cond_emb_dim, mlp_dim, f"bench{seed}")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for _, p in sorted(network.named_parameters()):
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return network.to(torch.device("cpu"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net (random weights) instead of the tiny one")
    parser.add_argument("--resolution", type=int, default=None, help="square picture size (default 128 tiny, 1024 full)")
    parser.add_argument("--dtype", choices=benchlib.DTYPE_NAMES, default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per measurement, >= 2 (default 3 tiny, 8 full)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each times every variant twice)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if torch sees a GPU")
    parser.add_argument("--smoke", action="store_true", help="smallest settings: 64 px, 2 steps, 1 round (a few seconds)")
    opts = parser.parse_args()
    if opts.smoke:
        opts.resolution, opts.steps, opts.rounds = opts.resolution or 64, 2, 1
        benchlib.smoke_threads()

    benchlib.bootstrap(cpu=opts.cpu)
    import comfy.sample

    from lllite_kit.lllite.module import LLLiteModule
    from lllite_kit.lllite.patch import apply_lllite

    dtype = benchlib.torch_dtype(opts.dtype)
    if opts.full_sdxl:
        resolution, steps = opts.resolution or 1024, opts.steps or 8
        model = benchlib.build_full_sdxl(opts.dtype)
        positive, negative = _conditioning(benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM, 77)
        dims = (32, 64)
    else:
        import tiny_models

        resolution, steps = opts.resolution or 128, opts.steps or 3
        model = tiny_models.build_model("sdxl", seed=0, dtype=dtype)
        positive, negative = _conditioning(tiny_models.SDXL_CONTEXT_DIM, tiny_models.CLIP_G["projection_dim"], 77)
        dims = (8, 16)
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

    def step_time(m) -> float:
        """Mean time between the sampler's step callbacks: the steps alone, without the
        per-call set-up (model load, conditioning, the first call's guide embeddings)."""
        stamps = []

        def callback(step, x0, x, total):
            benchlib.sync()
            stamps.append(time.perf_counter())

        comfy.sample.sample(m, noise, steps, 7.0, "euler", "normal", positive, negative, latent,
                            callback=callback, disable_pbar=True, seed=1)
        return (stamps[-1] - stamps[0]) / (len(stamps) - 1)

    for m in variants.values():  # warm-up: model load, kernels, the guide embeddings
        step_time(m)
    embeds[0] = 0
    times = {k: [] for k in variants}
    order = list(variants) + list(reversed(variants))
    for _ in range(opts.rounds):
        for name in order:
            times[name].append(step_time(variants[name]))

    base = benchlib.median(times["bare"])
    model_name = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net"
    print(f"machine: {benchlib.machine()}")
    print(f"{model_name}, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, euler {steps} steps x "
          f"{2 * opts.rounds} runs per variant, LLLite E{dims[0]}/R{dims[1]} (136 modules)")
    for name, ts in times.items():
        med = benchlib.median(ts)
        print(f"  {name:12s} {med * 1000:9.2f} ms/step  (min {min(ts) * 1000:.2f}, max {max(ts) * 1000:.2f})")
    for name in ("one LLLite", "two LLLites"):
        benchlib.ratio(f"{name} / bare step time", benchlib.median(times[name]) / base)
    benchlib.ratio("overhead per LLLite", (benchlib.median(times["two LLLites"]) / base - 1) / 2 + 1, "goal on GPU: <= 1.03")
    print(f"guide embedding computations during the timed steps: {embeds[0]} (0 = computed once, reused)")


if __name__ == "__main__":
    main()
