"""Anima LLLite v2 training step time and peak memory, against a bare forward+backward of the
frozen Anima DiT at the same settings (the floor any adapter trainer sits on). Each run is its
own process (so peak memory is that run's), runs interleaved A B B A, medians of the per-step
times.

    .venv/bin/python bench/bench_anima_lllite_train.py      # tiny Anima (tests/tiny_nodes) on CPU, 256 px, batch 1
    .venv/bin/python bench/bench_anima_lllite_train.py --full-anima --resolution 1024 --batch 2 --bf16 --gradient-checkpointing
    .venv/bin/python bench/bench_anima_lllite_train.py --smoke    # seconds: smallest settings, one process

The LLLite step is the training engine's whole step (conditioning tower, the modules on all 5
targets of every DiT block, forward, backward, clipping, AdamW) with cond_emb_dim 32 /
network_dim 64; timesteps drawn as sd-scripts draws Anima's (sigmoid). Weights are random
(speed does not depend on their values); the text context is a fixed 512-token tensor (what
the DiT's text adapter gives it). Memory: peak GPU allocation on a GPU, peak RSS growth on CPU.
"""
import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

CONTEXT_TOKENS = 512  # core pads Anima's context to 512 tokens


def worker(opts) -> dict:
    """One run of one variant in this process; returns per-step seconds and peak bytes."""
    benchlib.bootstrap()
    import torch

    import comfy.model_management
    import tiny_anima
    from lllite_kit.training.anima.model import trainable_anima
    from lllite_kit.training.data.batch import Batch

    dtype = torch.bfloat16 if opts.bf16 else torch.float32
    if opts.full_anima:
        from bench_anima_lllite_apply import full_anima

        model, ctx_dim = full_anima(dtype), 1024
    else:
        model, ctx_dim = tiny_anima.build_anima(seed=0, dtype=dtype), tiny_anima.CONTEXT_DIM
    g = torch.Generator().manual_seed(0)
    b, size = opts.batch, opts.resolution
    latents = torch.randn(b, 16, size // 8, size // 8, generator=g)
    guides = torch.rand(b, 3, size, size, generator=g) * 2 - 1
    context = torch.randn(1, CONTEXT_TOKENS, ctx_dim, generator=g)
    batch = Batch(latents, ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b, guides)
    steps = opts.warmup + opts.steps
    precision = "bf16" if opts.bf16 else "no"

    with benchlib.Peak() as peak, benchlib.StepClock() as clock:
        with torch.inference_mode(False), trainable_anima(model, precision, opts.gradient_checkpointing) as tm:
            if opts.variant == "bare":
                info = benchlib.bare_steps(tm, latents, context, None, steps, g, clock)
            else:
                info = _run_lllite(opts, tm, batch, context, steps, precision)
    comfy.model_management.soft_empty_cache()
    return {"times": clock.step_times(opts.warmup), "peak": peak.bytes, "info": info}


def _run_lllite(opts, tm, batch, context, steps, precision) -> str:
    """The engine's steps, stamped by benchlib.StepClock at each optimizer step's end."""
    from lllite_kit.training.anima.lllite_adapter import AnimaLLLiteAdapter
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.engine import TrainingEngine

    adapter = AnimaLLLiteAdapter(cond_emb_dim=opts.cond_emb_dim, network_dim=opts.network_dim, cond_dim=opts.cond_emb_dim)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=2e-4, mixed_precision=precision, save_state=False,
                      gradient_checkpointing=opts.gradient_checkpointing, output_name="bench_anima_lllite")
    with tempfile.TemporaryDirectory() as out:
        TrainingEngine(cfg, tm, benchlib.FixedText(context, None), adapter, benchlib.OneBatch(batch), out,
                       lambda facts: {}).run()
    n = sum(p.numel() for p in adapter.network.parameters())
    return f"{len(adapter.network.targets)} LLLite modules, {n / 1e6:.2f} M trainable parameters"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    benchlib.lllite_train_options(p, "--full-anima", "full-size Anima DiT (2048 wide, 28 blocks; GPU)")
    opts = p.parse_args()
    if opts.smoke:
        # cond_emb_dim 16: the tower's GroupNorms need 2+ values per group at batch 1 (8 channels give 1)
        opts.resolution, opts.cond_emb_dim, opts.network_dim, opts.steps, opts.warmup = opts.resolution or 64, 16, 8, 1, 1
        benchlib.smoke_threads()
    opts.resolution = opts.resolution or (1024 if opts.full_anima else 256)
    if opts.resolution % 16:
        sys.exit("--resolution must be a multiple of 16 (8x VAE, 2x2 DiT patches)")
    if opts.variant:
        benchlib.print_result(worker(opts))
        return

    results = benchlib.run_lllite_train_variants(__file__, opts, worker, "--full-anima")
    model = "full-size Anima DiT" if opts.full_anima else "tiny Anima DiT (tests/tiny_nodes)"
    med, peak = benchlib.report_lllite_train(results, opts, model, "bare DiT fwd+bwd")
    import torch

    if torch.cuda.is_available():  # on a CPU peak is RSS growth, too coarse for a ratio
        benchlib.ratio("LLLite / bare peak memory", peak["lllite"] / peak["bare"])


if __name__ == "__main__":
    main()
