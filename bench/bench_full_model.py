"""Full U-Net training step (DreamBooth / fine-tuning: every U-Net weight trained) with and
without the memory features sd-scripts uses for sdxl_train.py: the fused backward pass (each
weight stepped in its gradient hook, its gradient freed at once) and full_bf16 (bf16 weights and
gradients, stochastic rounding). Four variants, each its own process (so peak memory is that
run's), interleaved A B .. B A, on the same engine (training/engine.py) with the same optimizer
(AdaFactor with a fixed rate, as sd-scripts documents for a 24 GB SDXL fine-tune), bf16 compute,
no gradient clipping (the fused pass cannot clip). Reported relative to the plain run.

    .venv/bin/python bench/bench_full_model.py                # tiny SDXL-layout U-Net on CPU, 128 px
    .venv/bin/python bench/bench_full_model.py --full-sdxl    # full-size SDXL U-Net, 1024 px, batch 1, checkpointing, GPU
    .venv/bin/python bench/bench_full_model.py --smoke        # seconds: smallest settings, one process

Peak memory = the U-Net's weights (fp32, or bf16 with full_bf16) + the peak growth during
training: CUDA's allocator peak on a GPU, RSS growth sampled every 2 ms on CPU (each run's
process maps tensors of 64 KiB and more straight from the OS, so freed gradients leave RSS). Weights are
random (speed and memory do not depend on their values); text conditioning is fixed tensors of
the right shapes; no file is written (saving a checkpoint is not part of a step).
"""
import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

VARIANTS = ("plain", "fused", "bf16", "fused-bf16")
LABELS = {"plain": "plain (fp32 weights)", "fused": "fused backward", "bf16": "full_bf16", "fused-bf16": "fused + full_bf16"}
SD_SCRIPTS_GOAL_GB = 24  # sdxl_train.py's documented fit: fused backward + AdaFactor + bf16 + checkpointing


def worker(opts) -> dict:
    """One run of one variant in this process: per-step seconds, peak bytes, facts."""
    benchlib.bootstrap()
    import torch

    import comfy.model_management
    from lllite_kit.training.comfy_bridge import trainable_model
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.data.batch import Batch
    from lllite_kit.training.engine import TrainHooks, TrainingEngine
    from lllite_kit.training.optimizers import build_optimizer

    full_bf16, fused = "bf16" in opts.variant, "fused" in opts.variant
    # a full_bf16 run starts from a bf16 model, as a bf16 checkpoint loads: no fp32 copy is ever held
    model, ctx_dim, pooled_dim = _model(opts.full_sdxl, "bf16" if full_bf16 else "fp32")
    g = torch.Generator().manual_seed(0)
    b, size = opts.batch, opts.size
    latents = torch.randn(b, 4, size // 8, size // 8, generator=g)
    text = benchlib.FixedText(torch.randn(1, 77, ctx_dim, generator=g), torch.randn(1, pooled_dim, generator=g))
    batch = Batch(latents, ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b)
    adafactor = opts.optimizer.lower() == "adafactor"
    cfg = TrainConfig(max_train_steps=opts.warmup + opts.steps, learning_rate=1e-5, optimizer_type=opts.optimizer,
                      optimizer_args={"relative_step": False, "scale_parameter": False} if adafactor else {},
                      mixed_precision="bf16", full_bf16=full_bf16, fused_backward_pass=fused, max_grad_norm=0.0,
                      gradient_checkpointing=opts.checkpointing, save_state=False, output_name="bench_full")
    clock = benchlib.StepClock()  # stamped by the engine after each step: the fused pass steps weight by weight
    # the optimizer's package imported before the measurement: its import is no training memory
    build_optimizer(cfg.optimizer_type, [{"params": [torch.nn.Parameter(torch.zeros(1))]}], 1e-5, cfg.optimizer_args)
    with torch.inference_mode(False), trainable_model(model, cfg.mixed_precision, opts.checkpointing) as tm, \
            tempfile.TemporaryDirectory() as out:
        weights = sum(p.numel() * p.element_size() for p in tm.diffusion_model.parameters())
        with benchlib.Peak() as peak:
            TrainingEngine(cfg, tm, text, _unet_without_file(tm), benchlib.OneBatch(batch), out, lambda facts: {},
                           hooks=TrainHooks(progress=clock.stamp)).run()
        params = sum(p.numel() for p in tm.diffusion_model.parameters())
    comfy.model_management.soft_empty_cache()
    return {"times": clock.step_times(opts.warmup), "peak": weights + peak.bytes, "params": params}


def _model(full_sdxl: bool, dtype: str):
    """A fresh U-Net per run (training changes it in place) and its text widths."""
    if full_sdxl:
        return benchlib.build_full_sdxl(dtype), benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM
    import tiny_models

    return (tiny_models.build_model("sdxl", 0, benchlib.torch_dtype(dtype)), tiny_models.SDXL_CONTEXT_DIM,
            tiny_models.CLIP_G["projection_dim"])


def _unet_without_file(tm):
    """The full-model trainer's adapter on the U-Net alone, saving nothing."""
    from lllite_kit.training.full_model import FullModelAdapter

    class UNetOnly(FullModelAdapter):
        def save(self, path, dtype, metadata):
            pass

    return UNetOnly(tm.patcher, None, None, "sdxl")


def report(opts, results: dict) -> None:
    benchlib.bootstrap()
    print(f"\nmachine: {benchlib.machine()}")
    model = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net (tests/tiny_nodes)"
    params = next(iter(results.values()))[0]["params"]
    print(f"setting: {model} ({params:,} parameters, all trained), {opts.size}x{opts.size} px, batch {opts.batch}, "
          f"{opts.optimizer}, bf16 compute, gradient checkpointing {'on' if opts.checkpointing else 'off'}, no clipping, "
          f"{opts.steps} timed steps x {len(next(iter(results.values())))} runs each")
    med = {v: benchlib.median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: benchlib.median([r["peak"] for r in rs]) for v, rs in results.items()}
    for v in results:
        print(f"  {LABELS[v]:<22} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:10.1f} MiB")
    for v in (v for v in results if v != "plain"):
        if "plain" in results:
            benchlib.ratio(f"{LABELS[v]} / plain peak memory", peak[v] / peak["plain"], "goal < 1")
            benchlib.ratio(f"{LABELS[v]} / plain step time", med[v] / med["plain"])
    if opts.full_sdxl and "fused-bf16" in results:
        print(f"\n  fused + full_bf16 peak {peak['fused-bf16'] / 2**30:.1f} GiB (sd-scripts' goal: under {SD_SCRIPTS_GOAL_GB} GB)")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net (GPU); defaults become 1024 px and checkpointing")
    p.add_argument("--smoke", action="store_true", help="smallest settings, every variant once in this process (seconds)")
    p.add_argument("--size", type=int, help="image side in pixels (latent side x8); default 128, 1024 with --full-sdxl")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--optimizer", default="AdaFactor", choices=["AdaFactor", "AdamW"])
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="each round runs every variant twice, A B .. B A")
    p.add_argument("--variants", default=",".join(VARIANTS), help="which to run, comma-separated")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.smoke:
        opts.size, opts.steps, opts.warmup = opts.size or 64, 1, 1
        benchlib.smoke_threads()
    opts.size = opts.size or (1024 if opts.full_sdxl else 128)
    opts.checkpointing = opts.full_sdxl if opts.checkpointing is None else opts.checkpointing
    if opts.variant:
        benchlib.print_result(worker(opts))
        return

    # glibc otherwise keeps freed tensor memory in its heap, and RSS would not fall when a gradient is freed
    os.environ.setdefault("MALLOC_MMAP_THRESHOLD_", "65536")
    base = [sys.executable, __file__, "--size", str(opts.size), "--batch", str(opts.batch), "--optimizer", opts.optimizer,
            "--steps", str(opts.steps), "--warmup", str(opts.warmup),
            "--checkpointing" if opts.checkpointing else "--no-checkpointing"]
    base += ["--full-sdxl"] if opts.full_sdxl else []
    chosen = [v for v in VARIANTS if v in opts.variants.split(",")]
    report(opts, benchlib.run_variants(base, chosen, opts.rounds, worker, opts, separate=not opts.smoke))


if __name__ == "__main__":
    main()
