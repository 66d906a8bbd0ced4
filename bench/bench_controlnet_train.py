"""ControlNet training step time and peak memory, against a bare forward+backward of the frozen
U-Net at the same settings (the floor of any adapter trainer: the backward pass has to cross
the U-Net's decoder to reach the control outputs). Each run is its own process (so peak memory is
that run's), runs interleaved A B B A, medians of the per-step times.

    .venv/bin/python bench/bench_controlnet_train.py     # tiny SDXL-layout U-Net on CPU, 256 px, batch 1
    .venv/bin/python bench/bench_controlnet_train.py --full sdxl --resolution 1024 --bf16 --full-bf16 \\
        --gradient-checkpointing --optimizer AdamW8bit                                # the settings for 16 GB
    .venv/bin/python bench/bench_controlnet_train.py --full sd15 --resolution 512 --bf16 --gradient-checkpointing
    .venv/bin/python bench/bench_controlnet_train.py --smoke   # seconds: smallest settings, one process

The ControlNet step is the training engine's whole step with the ControlNet adapter (made from
the U-Net as tool_add_control makes it: SDXL 1.25 B, SD1.5 361 M trainable parameters at full
size): the ControlNet's forward, the U-Net's, the backward through both, clipping, the optimizer.
Weights are random (speed does not depend on their values); text conditioning is fixed tensors
of the right shapes. Memory: peak GPU allocation on a GPU, peak RSS growth on the CPU.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

def _model(opts):
    """(MODEL, context width, pooled width or None)."""
    import torch

    dtype_name = "bf16" if opts.bf16 else "fp32"
    if opts.full == "sdxl":
        return benchlib.build_full_sdxl(dtype_name), benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM
    if opts.full == "sd15":
        return benchlib.build_full_sd15(dtype_name), 768, None
    sys.path.insert(0, str(benchlib.REPO / "tests"))
    import tiny_models
    from controlnet_testing import build_model  # heads as core's ControlNet loader reads them back

    model = build_model(opts.family, 0, benchlib.torch_dtype(dtype_name))
    context = tiny_models.SDXL_CONTEXT_DIM if opts.family == "sdxl" else tiny_models.SD15_CONTEXT_DIM
    return model, context, tiny_models.CLIP_G["projection_dim"] if opts.family == "sdxl" else None


def worker(opts) -> dict:
    """One run of one variant in this process; returns per-step seconds and peak bytes."""
    benchlib.bootstrap()
    import torch

    import comfy.model_management
    from lllite_kit.training.comfy_bridge import trainable_model
    from lllite_kit.training.data.batch import Batch

    model, ctx_dim, pooled_dim = _model(opts)
    g = torch.Generator().manual_seed(0)
    b, size = opts.batch, opts.resolution
    latents = torch.randn(b, 4, size // 8, size // 8, generator=g)
    guides = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    context = torch.randn(1, 77, ctx_dim, generator=g)
    pooled = None if pooled_dim is None else torch.randn(1, pooled_dim, generator=g)
    batch = Batch(latents, ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b, guides)
    steps = opts.warmup + opts.steps

    with benchlib.Peak() as peak, benchlib.StepClock() as clock:
        with torch.inference_mode(False), trainable_model(model, "bf16" if opts.bf16 else "no", opts.gradient_checkpointing) as tm:
            if opts.variant == "bare":
                y = None if pooled is None else tm.adm(pooled.repeat(b, 1), batch.original_sizes, batch.crop_top_left,
                                                        batch.target_sizes)
                info = benchlib.bare_steps(tm, latents, context, y, steps, g, clock)
            else:
                info = _run_controlnet(opts, tm, batch, context, pooled, steps)
    comfy.model_management.soft_empty_cache()
    return {"times": clock.step_times(opts.warmup), "peak": peak.bytes, "info": info}


def _run_controlnet(opts, tm, batch, context, pooled, steps) -> str:
    """The engine's steps, stamped by benchlib.StepClock at each optimizer step's end."""
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.controlnet.adapter import ControlNetAdapter
    from lllite_kit.training.engine import TrainingEngine

    adapter = ControlNetAdapter(dict(tm.model_config.unet_config), tm.family, gradient_checkpointing=opts.gradient_checkpointing,
                                file_layout="lllyasviel")
    cfg = TrainConfig(max_train_steps=steps, learning_rate=1e-5, mixed_precision="bf16" if opts.bf16 else "no",
                      full_bf16=opts.full_bf16, optimizer_type=opts.optimizer, save_state=False,
                      gradient_checkpointing=opts.gradient_checkpointing, output_name="bench_controlnet")
    with tempfile.TemporaryDirectory() as out:
        TrainingEngine(cfg, tm, benchlib.FixedText(context, pooled), adapter, benchlib.OneBatch(batch), out, lambda facts: {}).run()
    n = sum(p.numel() for p in adapter.control.parameters())
    return f"ControlNet, {n / 1e6:.1f} M trainable parameters"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full", choices=["sdxl", "sd15"], help="full-size U-Net of this family (GPU)")
    p.add_argument("--family", choices=["sdxl", "sd15"], default="sdxl", help="tiny model's family (without --full)")
    p.add_argument("--smoke", action="store_true", help="smallest settings, each variant once in this process (a few seconds)")
    p.add_argument("--resolution", type=int, help="image side in pixels; default 256, 1024 for --full sdxl, 512 for --full sd15")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 U-Net weights and autocast (ControlNet master weights fp32)")
    p.add_argument("--full-bf16", action="store_true", help="the ControlNet's weights, gradients and optimizer state in bf16 too")
    p.add_argument("--optimizer", default="AdamW", help="AdamW, AdamW8bit (bitsandbytes, GPU), Adafactor ...")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="each round runs controlnet, bare, bare, controlnet")
    p.add_argument("--variant", choices=["controlnet", "bare"], help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.full_bf16 and not opts.bf16:
        sys.exit("--full-bf16 needs --bf16")
    if opts.smoke:
        opts.resolution, opts.steps, opts.warmup = opts.resolution or 64, 1, 1
        benchlib.smoke_threads()
    opts.resolution = opts.resolution or {"sdxl": 1024, "sd15": 512, None: 256}[opts.full]
    if opts.resolution % 64:
        sys.exit("--resolution must be a multiple of 64 (ControlNet training sizes)")
    if opts.variant:
        benchlib.print_result(worker(opts))
        return

    base = [sys.executable, __file__, "--resolution", str(opts.resolution), "--batch", str(opts.batch), "--family", opts.family,
            "--optimizer", opts.optimizer, "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    base += ["--full", opts.full] if opts.full else []
    base += [flag for flag, on in (("--bf16", opts.bf16), ("--full-bf16", opts.full_bf16),
                                   ("--gradient-checkpointing", opts.gradient_checkpointing)) if on]
    results = benchlib.run_variants(base, ["controlnet", "bare"], opts.rounds, worker, opts, separate=not opts.smoke)
    info = {v: rs[0]["info"] for v, rs in results.items()}

    benchlib.bootstrap()
    print(f"\nmachine: {benchlib.machine()}")
    model = f"full-size {opts.full.upper()} U-Net" if opts.full else f"tiny {opts.family.upper()}-layout U-Net (tests/tiny_nodes)"
    print(f"setting: {model}, {opts.resolution}x{opts.resolution} px, batch {opts.batch}, {'bf16' if opts.bf16 else 'fp32'}"
          f"{' + full_bf16' if opts.full_bf16 else ''}, gradient checkpointing {'on' if opts.gradient_checkpointing else 'off'}, "
          f"{opts.optimizer}, {opts.steps} timed steps x {len(results['bare'])} runs each")
    med = {v: benchlib.median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: benchlib.median([r["peak"] for r in rs]) for v, rs in results.items()}
    for v, label in (("controlnet", "ControlNet training step"), ("bare", "bare U-Net fwd+bwd")):
        print(f"{label:<25} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:9.1f} MiB   [{info[v]}]")
    print()
    benchlib.ratio("ControlNet / bare step time", med["controlnet"] / med["bare"])
    if not opts.smoke:  # one process runs both variants there: the second one's RSS growth says nothing
        benchlib.ratio("ControlNet / bare peak memory", peak["controlnet"] / max(peak["bare"], 1))
    if opts.full:
        print(f"ControlNet peak memory      : {peak['controlnet'] / 2**30:.2f} GiB   (goal: fits 16 GB)")


if __name__ == "__main__":
    main()
