"""LoRA training step time and peak memory: our trainer vs ComfyUI core's TrainLoraNode on the
same model, batch, rank and dtype, plus a bare forward+backward of the frozen U-Net at the
same settings (the floor any adapter trainer sits on). Each run is its own process (so peak
memory is that run's), runs interleaved A B C C B A, medians of the per-step times.

    .venv/bin/python bench/bench_train_lora.py                 # tiny SDXL on CPU, 256 px
    .venv/bin/python bench/bench_train_lora.py --full-sdxl     # full-size SDXL U-Net, 1024 px, bf16, GPU

Weights are random (speed does not depend on their values); text conditioning is fixed
tensors of the right shapes. Memory: peak GPU allocation on a GPU, peak RSS growth over the
run on CPU (core's figure includes its second copy of the model, which it makes to train).
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")

SDXL_FULL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False, "use_temporal_resblock": False,
}
DTYPES = {"fp32": ("no", "fp32"), "bf16": ("bf16", "bf16"), "fp16": ("fp16", "none")}  # ours, core training_dtype


def _bootstrap():
    sys.path[:0] = [str(COMFYUI_DIR), str(REPO / "tests" / "tiny_nodes")]
    import importlib.util
    import types

    import torch
    from comfy.cli_args import args

    args.cpu = not torch.cuda.is_available()
    package = types.ModuleType("lllite_kit")
    package.__path__ = [str(REPO)]
    sys.modules["lllite_kit"] = package
    assert importlib.util.find_spec("lllite_kit.training.engine")


def build_full_sdxl(dtype_name: str = "bf16", **_ignored):
    """Full-size SDXL base U-Net with random weights (cached_patcher_init lets core's trainer
    rebuild it, as it does with a loaded checkpoint)."""
    import torch

    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype_name]
    config = comfy.supported_models.SDXL(dict(SDXL_FULL_UNET, dtype=dtype))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=comfy.model_management.get_torch_device())
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0, 0.02)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                               offload_device=torch.device("cpu"))
    patcher.cached_patcher_init = (build_full_sdxl, (dtype_name,))
    return patcher


class _Peak:
    """Peak memory over a run: CUDA's allocator counter, or RSS sampled every 2 ms."""

    def __init__(self, cuda: bool):
        self.cuda = cuda

    def __enter__(self):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.peak = _rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.bytes = self.peak - self.base


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def worker(opts) -> dict:
    """One run of one variant in this process; returns per-step seconds and peak bytes."""
    _bootstrap()
    import torch

    import comfy.model_management
    from lllite_kit.training.data.batch import Batch

    cuda = torch.cuda.is_available()
    if opts.full_sdxl:
        model = build_full_sdxl(opts.dtype)
        ctx_dim, pooled_dim = 2048, 1280
    else:
        import tiny_models

        model = tiny_models.build_model("sdxl", 0)
        ctx_dim, pooled_dim = tiny_models.SDXL_CONTEXT_DIM, tiny_models.CLIP_G["projection_dim"]
    g = torch.Generator().manual_seed(0)
    b, lat = opts.batch, opts.size // 8
    latents = torch.randn(b, 4, lat, lat, generator=g)
    context = torch.randn(1, 77, ctx_dim, generator=g)
    pooled = torch.randn(1, pooled_dim, generator=g)
    stamps, steps = [], opts.warmup + opts.steps

    with _Peak(cuda) as peak:
        if opts.variant == "core":
            import comfy_extras.nodes_train as core

            original_init = core.TrainSampler.__init__

            def timed_init(self, *a, **k):
                original_init(self, *a, **k)
                inner = self.loss_callback
                self.loss_callback = lambda loss: (inner(loss), stamps.append(time.perf_counter()), _sync(cuda))
            core.TrainSampler.__init__ = timed_init
            positive = [[context, {"pooled_output": pooled, "width": opts.size, "height": opts.size}]]
            core.TrainLoraNode.execute(
                model=[model], latents=[{"samples": latents}], positive=[positive], batch_size=[b], grad_accumulation_steps=[1],
                steps=[steps], learning_rate=[1e-4], rank=[opts.rank], optimizer=["AdamW"], loss_function=["MSE"], seed=[0],
                training_dtype=[DTYPES[opts.dtype][1]], lora_dtype=["fp32"], quantized_backward=[False], algorithm=["LoRA"],
                gradient_checkpointing=[opts.checkpointing], checkpoint_depth=[1], offloading=[False],
                existing_lora=["[None]"], bucket_mode=[False], bypass_mode=[False])
            info = "every weight and bias of the model (core's design)"
        else:
            from lllite_kit.training.comfy_bridge import trainable_model

            with torch.inference_mode(False), trainable_model(model, DTYPES[opts.dtype][0], opts.checkpointing) as tm:
                batch = Batch(latents, ["x"] * b, [(opts.size, opts.size)] * b, [(0, 0)] * b, [(opts.size, opts.size)] * b)
                if opts.variant == "bare":
                    y = tm.adm(pooled.repeat(b, 1), batch.original_sizes, batch.crop_top_left, batch.target_sizes)
                    for i in range(steps):
                        x = latents.to(tm.device).requires_grad_(True)
                        t = torch.randint(0, 1000, (b,), generator=g).to(tm.device)
                        loss = (tm.predict(x, t, context.repeat(b, 1, 1), y) - x.detach()).square().mean()
                        loss.backward()
                        _sync(cuda)
                        stamps.append(time.perf_counter())
                    info = "no adapter: gradients to the input only"
                else:
                    info = _run_ours(opts, tm, batch, context, pooled, steps, stamps, cuda)
    times = [t1 - t0 for t0, t1 in zip(stamps, stamps[1:])][max(0, opts.warmup - 1):]  # a step ends at its stamp
    comfy.model_management.soft_empty_cache()
    return {"times": times, "peak": peak.bytes, "info": info}


def _sync(cuda):
    if cuda:
        import torch

        torch.cuda.synchronize()


def _run_ours(opts, tm, batch, context, pooled, steps, stamps, cuda) -> str:
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.engine import TrainHooks, TrainingEngine
    from lllite_kit.training.lora import LoRAAdapter, LoRAConfig

    class FixedText:  # the engine's text interface, with the bench's fixed tensors
        def encode(self, captions, device):
            return context.repeat(len(captions), 1, 1).to(device), pooled.repeat(len(captions), 1).to(device)

        def modules(self):
            return {}

    class OneBatch:
        def __len__(self):
            return 1

        def batches(self, epoch, start=0):
            yield from ([batch] if start == 0 else [])

    conv = opts.rank if opts.conv else None
    adapter = LoRAAdapter(LoRAConfig(dim=opts.rank, alpha=opts.rank, conv_dim=conv, conv_alpha=conv, train_text_encoder=False),
                          tm.model_config)
    cfg = TrainConfig(max_train_steps=steps, learning_rate=1e-4, mixed_precision=DTYPES[opts.dtype][0], save_state=False,
                      gradient_checkpointing=opts.checkpointing, output_name="bench_lora", max_grad_norm=0.0)
    hooks = TrainHooks(progress=lambda *a: (_sync(cuda), stamps.append(time.perf_counter())))
    import tempfile

    with tempfile.TemporaryDirectory() as out:
        TrainingEngine(cfg, tm, FixedText(), adapter, OneBatch(), out, lambda facts: {}, hooks=hooks).run()
    n = sum(p.numel() for m in adapter.modules.values() for p in m.parameters())
    return f"{len(adapter.modules)} LoRA modules ({'C3Lier' if conv else 'LierLa'}), {n / 1e6:.2f} M trainable parameters"


def _machine() -> str:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return f"{cpu} ({os.cpu_count()} cores), {gpu}, torch {torch.__version__}, Python {platform.python_version()}"


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net (GPU); defaults become 1024 px, bf16, checkpointing")
    p.add_argument("--size", type=int, help="image side in pixels (latent side x8); default 256, 1024 with --full-sdxl")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", choices=list(DTYPES), help="default fp32 on CPU, bf16 with --full-sdxl")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--conv", action="store_true", help="our LoRA also on 3x3 convs (C3Lier), closer to core's all-layer set")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="each round runs ours, core, bare, bare, core, ours")
    p.add_argument("--variants", default="ours,core,bare",
                   help="which to run; e.g. ours,bare for full-size SDXL on a CPU, where core's second model copy needs 20 GB")
    p.add_argument("--variant", choices=["ours", "core", "bare"], help=argparse.SUPPRESS)
    opts = p.parse_args()
    opts.size = opts.size or (1024 if opts.full_sdxl else 256)
    opts.dtype = opts.dtype or ("bf16" if opts.full_sdxl else "fp32")
    opts.checkpointing = opts.full_sdxl if opts.checkpointing is None else opts.checkpointing
    if opts.variant:
        print("RESULT " + json.dumps(worker(opts)), flush=True)
        return

    base = [sys.executable, __file__, "--size", str(opts.size), "--batch", str(opts.batch), "--rank", str(opts.rank),
            "--dtype", opts.dtype, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
            "--checkpointing" if opts.checkpointing else "--no-checkpointing"] + (["--full-sdxl"] if opts.full_sdxl else []) + (["--conv"] if opts.conv else [])
    chosen = [v for v in ("ours", "core", "bare") if v in opts.variants.split(",")]
    results = {v: [] for v in chosen}
    info = {}
    for _ in range(opts.rounds):
        for variant in chosen + chosen[::-1]:
            proc = subprocess.run(base + ["--variant", variant], capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[7:])
            results[variant].append(r)
            info[variant] = r["info"]
            print(f"  {variant:<5} median step {statistics.median(r['times']) * 1000:8.1f} ms  peak {r['peak'] / 2**20:8.1f} MiB", flush=True)

    _bootstrap()
    print(f"\nmachine: {_machine()}")
    model = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net (tests/tiny_nodes)"
    print(f"setting: {model}, {opts.size}x{opts.size} px, batch {opts.batch}, rank {opts.rank}, {opts.dtype}, "
          f"gradient checkpointing {'on' if opts.checkpointing else 'off'}, AdamW, {opts.steps} timed steps x {2 * opts.rounds} runs each")
    med = {v: statistics.median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: statistics.median([r["peak"] for r in rs]) for v, rs in results.items()}
    for v, label in (("ours", "ours (LLLite Kit)"), ("core", "core TrainLoraNode"), ("bare", "bare U-Net fwd+bwd")):
        if v in med:
            print(f"{label:<20} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:9.1f} MiB   [{info[v]}]")
    print()
    if "core" in med:
        print(f"ours / core step time : x{med['ours'] / med['core']:.2f}   (goal < 1)")
        print(f"ours / core peak mem  : x{peak['ours'] / peak['core']:.2f}   (goal < 1)")
    if "bare" in med:
        print(f"ours / bare step time : x{med['ours'] / med['bare']:.2f}   (goal <= 1.15)")


if __name__ == "__main__":
    main()
