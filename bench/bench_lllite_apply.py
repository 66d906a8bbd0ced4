"""Sampling step time with ControlNet-LLLite: the bare model vs one LLLite vs two LLLites on the
same model in one run, interleaved (bare one two two one bare ...), medians, overhead ratios.

    .venv/bin/python bench/bench_lllite_apply.py                 # tiny SDXL-layout model, 128x128 (< 1 min on CPU)
    .venv/bin/python bench/bench_lllite_apply.py --full-sdxl --resolution 1024 --dtype fp16   # on a GPU

--full-sdxl builds the full-size SDXL U-Net with random weights (speed does not depend on their
values) and LLLites of kohya's released size (cond_emb_dim 32, network_dim 64, 136 modules).
Goal on a GPU: at most 1.03x per LLLite; the guide embedding is computed once, not per step
(the count of embedding computations during the timed steps is printed)."""
import argparse
import importlib.util
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
sys.path[:0] = [str(COMFYUI_DIR), str(REPO / "tests" / "tiny_nodes")]

import torch  # noqa: E402

from comfy.cli_args import args  # noqa: E402

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _import_pack():
    spec = importlib.util.spec_from_file_location("lllite_kit", REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules["lllite_kit"] = module
    spec.loader.exec_module(module)


def _machine(device) -> str:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = platform.processor() or platform.machine()
        try:
            name = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
        except (OSError, StopIteration):
            pass
        name += f", {torch.get_num_threads()} threads"
    return f"{name}; torch {torch.__version__}; python {platform.python_version()}"


def _full_sdxl(dtype, device):
    """comfy.model_base.SDXL at full size, random weights, wrapped like a loaded checkpoint."""
    import comfy.model_patcher
    import comfy.supported_models

    full = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
            "legacy": False, "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4,
            "model_channels": 320, "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10],
            "channel_mult": [1, 2, 4], "transformer_depth_middle": 10, "use_linear_in_transformer": True,
            "context_dim": 2048, "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
            "use_temporal_attention": False, "use_temporal_resblock": False, "dtype": dtype}
    config = comfy.supported_models.SDXL(full)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(0)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    return comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))


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
    parser.add_argument("--dtype", choices=list(DTYPES), default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per measurement, >= 2 (default 3 tiny, 8 full)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each times every variant twice)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if torch sees a GPU")
    opts = parser.parse_args()

    args.cpu = opts.cpu or not torch.cuda.is_available()
    import comfy.model_management as mm
    import comfy.sample

    _import_pack()
    from lllite_kit.lllite.module import LLLiteModule
    from lllite_kit.lllite.patch import apply_lllite

    device = mm.get_torch_device()
    dtype = DTYPES[opts.dtype]
    if opts.full_sdxl:
        resolution, steps = opts.resolution or 1024, opts.steps or 8
        model = _full_sdxl(dtype, device)
        positive, negative = _conditioning(2048, 1280, 77)
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
            if device.type == "cuda":
                torch.cuda.synchronize()
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

    base = statistics.median(times["bare"])
    model_name = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net"
    print(f"machine: {_machine(device)}")
    print(f"{model_name}, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, euler {steps} steps x "
          f"{2 * opts.rounds} runs per variant, LLLite E{dims[0]}/R{dims[1]} (136 modules)")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"  {name:12s} {med * 1000:9.2f} ms/step  ratio {med / base:.3f}  (min {min(ts) * 1000:.2f}, max {max(ts) * 1000:.2f})")
    per = (statistics.median(times["two LLLites"]) / base - 1) / 2 + 1
    print(f"overhead per LLLite: {per:.3f}x (goal on GPU: <= 1.03x)")
    print(f"guide embedding computations during the timed steps: {embeds[0]} (0 = computed once, reused)")


if __name__ == "__main__":
    main()
