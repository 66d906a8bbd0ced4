"""ControlNet-LLLite training step time and peak memory, against a bare forward+backward of the
frozen U-Net at the same settings (the floor any adapter trainer sits on: the backward pass
has to cross the whole U-Net to reach the adapter). Each run is its own process (so peak
memory is that run's), runs interleaved A B B A, medians of the per-step times.

    .venv/bin/python bench/bench_lllite_train.py       # tiny SDXL-layout U-Net on CPU, 256 px, batch 1
    .venv/bin/python bench/bench_lllite_train.py --full-sdxl --resolution 1024 --batch 4 --bf16 --gradient-checkpointing
    .venv/bin/python bench/bench_lllite_train.py --smoke     # seconds: smallest settings, one process

The LLLite step is the training engine's whole step (guide embeddings of all 136 modules,
forward, backward, gradient clipping, AdamW) with kohya's recommended cond_emb_dim 32 /
network_dim 64. Weights are random (speed does not depend on their values); text
conditioning is fixed tensors of the right shapes. Memory: peak GPU allocation on a GPU
(kohya documents 24 GB for LLLite at 1024 px; the goal here is under 16 GB), peak RSS
growth over the run on CPU.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def worker(opts) -> dict:
    """One run of one variant in this process; returns per-step seconds and peak bytes."""
    benchlib.bootstrap()
    import torch

    import comfy.model_management
    from lllite_kit.training.comfy_bridge import trainable_model
    from lllite_kit.training.data.batch import Batch

    if opts.full_sdxl:
        model = benchlib.build_full_sdxl("bf16" if opts.bf16 else "fp32")
        ctx_dim, pooled_dim = benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM
    else:
        import tiny_models

        model = tiny_models.build_model("sdxl", 0, torch.bfloat16 if opts.bf16 else torch.float32)
        ctx_dim, pooled_dim = tiny_models.SDXL_CONTEXT_DIM, tiny_models.CLIP_G["projection_dim"]
    g = torch.Generator().manual_seed(0)
    b, size = opts.batch, opts.resolution
    latents = torch.randn(b, 4, size // 8, size // 8, generator=g)
    guides = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    context = torch.randn(1, 77, ctx_dim, generator=g)
    pooled = torch.randn(1, pooled_dim, generator=g)
    batch = Batch(latents, ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b, guides)
    steps = opts.warmup + opts.steps

    with benchlib.Peak() as peak, benchlib.StepClock() as clock:
        with torch.inference_mode(False), trainable_model(model, "bf16" if opts.bf16 else "no", opts.gradient_checkpointing) as tm:
            if opts.variant == "bare":
                y = tm.adm(pooled.repeat(b, 1), batch.original_sizes, batch.crop_top_left, batch.target_sizes)
                info = benchlib.bare_steps(tm, latents, context, y, steps, g, clock)
            else:
                info = _run_lllite(opts, tm, batch, context, pooled, steps)
    comfy.model_management.soft_empty_cache()
    return {"times": clock.step_times(opts.warmup), "peak": peak.bytes, "info": info}


def _run_lllite(opts, tm, batch, context, pooled, steps) -> str:
    """The engine's steps, stamped by benchlib.StepClock at each optimizer step's end."""
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.engine import TrainingEngine
    from lllite_kit.training.lllite_adapter import LLLiteAdapter

    adapter = LLLiteAdapter(tm.family, opts.cond_emb_dim, opts.network_dim, checkpoint_embeddings=opts.gradient_checkpointing)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=2e-4, mixed_precision="bf16" if opts.bf16 else "no",
                      save_state=False, gradient_checkpointing=opts.gradient_checkpointing, output_name="bench_lllite")
    with tempfile.TemporaryDirectory() as out:
        TrainingEngine(cfg, tm, benchlib.FixedText(context, pooled), adapter, benchlib.OneBatch(batch), out, lambda facts: {}).run()
    n = sum(p.numel() for p in adapter.network.parameters())
    return f"{len(adapter.network.paths)} LLLite modules, {n / 1e6:.2f} M trainable parameters"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.lllite_train_options(p, "--full-sdxl", "full-size SDXL U-Net (GPU)")
    opts = p.parse_args()
    if opts.smoke:
        opts.resolution, opts.cond_emb_dim, opts.network_dim, opts.steps, opts.warmup = opts.resolution or 64, 8, 8, 1, 1
        benchlib.smoke_threads()
    opts.resolution = opts.resolution or (1024 if opts.full_sdxl else 256)
    if opts.resolution % 32:
        sys.exit("--resolution must be a multiple of 32 (LLLite training sizes)")
    if opts.variant:
        benchlib.print_result(worker(opts))
        return

    results = benchlib.run_lllite_train_variants(__file__, opts, worker, "--full-sdxl")
    model = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net (tests/tiny_nodes)"
    med, peak = benchlib.report_lllite_train(results, opts, model, "bare U-Net fwd+bwd")
    if opts.full_sdxl:
        print(f"LLLite peak memory      : {peak['lllite'] / 2**30:.2f} GiB   (goal < 16 GiB; kohya documents 24 GB)")


if __name__ == "__main__":
    main()
