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
                for _ in range(steps):
                    x = latents.to(tm.device).requires_grad_(True)
                    t = torch.randint(0, 1000, (b,), generator=g).to(tm.device)
                    loss = (tm.predict(x, t, context.repeat(b, 1, 1)) - x.detach()).square().mean()
                    loss.backward()
                    clock.stamp()
                info = "no adapter: gradients to the input only"
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
    p.add_argument("--full-anima", action="store_true", help="full-size Anima DiT (2048 wide, 28 blocks; GPU)")
    p.add_argument("--smoke", action="store_true", help="smallest settings, each variant once in this process (a few seconds)")
    p.add_argument("--resolution", type=int, help="image side in pixels; default 256, 1024 with --full-anima")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (LLLite weights stay fp32)")
    p.add_argument("--gradient-checkpointing", action="store_true")
    p.add_argument("--cond-emb-dim", type=int, default=32)
    p.add_argument("--network-dim", type=int, default=64)
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="each round runs lllite, bare, bare, lllite")
    p.add_argument("--variant", choices=["lllite", "bare"], help=argparse.SUPPRESS)
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

    base = [sys.executable, __file__, "--resolution", str(opts.resolution), "--batch", str(opts.batch),
            "--cond-emb-dim", str(opts.cond_emb_dim), "--network-dim", str(opts.network_dim),
            "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    base += [flag for flag, on in (("--full-anima", opts.full_anima), ("--bf16", opts.bf16),
                                   ("--gradient-checkpointing", opts.gradient_checkpointing)) if on]
    results = benchlib.run_variants(base, ["lllite", "bare"], opts.rounds, worker, opts, separate=not opts.smoke)
    info = {v: rs[0]["info"] for v, rs in results.items()}

    benchlib.bootstrap()
    print(f"\nmachine: {benchlib.machine()}")
    model = "full-size Anima DiT" if opts.full_anima else "tiny Anima DiT (tests/tiny_nodes)"
    print(f"setting: {model}, {opts.resolution}x{opts.resolution} px, batch {opts.batch}, cond_emb_dim {opts.cond_emb_dim} / "
          f"network_dim {opts.network_dim}, {'bf16' if opts.bf16 else 'fp32'}, gradient checkpointing "
          f"{'on' if opts.gradient_checkpointing else 'off'}, AdamW, {opts.steps} timed steps x {len(results['bare'])} runs each")
    med = {v: benchlib.median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: benchlib.median([r["peak"] for r in rs]) for v, rs in results.items()}
    for v, label in (("lllite", "LLLite training step"), ("bare", "bare DiT fwd+bwd")):
        print(f"{label:<21} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:9.1f} MiB   [{info[v]}]")
    print()
    benchlib.ratio("LLLite / bare step time", med["lllite"] / med["bare"])
    import torch

    if torch.cuda.is_available():  # on a CPU peak is RSS growth, too coarse for a ratio
        benchlib.ratio("LLLite / bare peak memory", peak["lllite"] / peak["bare"])


if __name__ == "__main__":
    main()
