"""Shared by the bench scripts: importing ComfyUI and the pack, the full-size SDXL U-Net,
timing (warm-up, device sync, interleaved medians, sampler step times), the apply benchmarks'
options and report, peak memory, the machine report, the one-process-per-run driver and the
ratio lines the smoke test looks for."""
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
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI").resolve()

# comfy.supported_models.SDXL's U-Net at full size (the published SDXL base checkpoint's layout)
SDXL_FULL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10], "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_FULL_CONTEXT_DIM, SDXL_FULL_POOLED_DIM = 2048, 1280
# comfy.supported_models.SD15's U-Net at full size (the published SD1.5 checkpoint's layout)
SD15_FULL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], "use_temporal_attention": False,
    "use_temporal_resblock": False,
}
DTYPE_NAMES = ("fp32", "fp16", "bf16")
# Ratio lines start with this word, so tests/test_bench_smoke.py can find them.
RATIO_PREFIX = "ratio"


def bootstrap(cpu: bool = False) -> None:
    """Makes ComfyUI, the tiny test models and this checkout (as package `lllite_kit`,
    without running its node registration) importable; cpu keeps ComfyUI off the GPU.
    Must run before anything imports comfy.model_management."""
    if "lllite_kit" in sys.modules:
        return
    import types

    import torch

    sys.path[:0] = [str(COMFYUI_DIR), str(REPO / "tests" / "tiny_nodes")]
    from comfy.cli_args import args

    args.cpu = cpu or not torch.cuda.is_available()
    package = types.ModuleType("lllite_kit")
    package.__path__ = [str(REPO)]
    sys.modules["lllite_kit"] = package


def smoke_threads() -> None:
    """One torch thread for --smoke runs: on a busy shared CPU, torch's spinning worker
    threads make a model of many small layers several times slower, not faster."""
    import torch

    torch.set_num_threads(1)


def torch_dtype(name: str):
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[name]


def build_full_sdxl(dtype_name: str = "bf16", seed: int = 0, **_loader_options):
    """Full-size SDXL base U-Net with random weights (speed does not depend on their values),
    in a ModelPatcher like a loaded checkpoint's. cached_patcher_init lets core's trainer
    rebuild it, as it does with a loaded checkpoint (passing loader options such as
    disable_dynamic, which a plain model ignores)."""
    return _build_full("SDXL", SDXL_FULL_UNET, build_full_sdxl, dtype_name, seed)


def build_full_sd15(dtype_name: str = "bf16", seed: int = 0, **_loader_options):
    """Full-size SD1.5 U-Net with random weights in a ModelPatcher (as build_full_sdxl)."""
    return _build_full("SD15", SD15_FULL_UNET, build_full_sd15, dtype_name, seed)


def _build_full(config_name: str, unet: dict, rebuild, dtype_name: str, seed: int):
    import torch

    import comfy.model_management
    import comfy.model_patcher
    import comfy.supported_models

    dtype, device = torch_dtype(dtype_name), comfy.model_management.get_torch_device()
    config = getattr(comfy.supported_models, config_name)(dict(unet, dtype=dtype))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in model.diffusion_model.parameters():
            p.normal_(0.0, 0.02, generator=g)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    patcher.cached_patcher_init = (rebuild, (dtype_name, seed))
    return patcher


def bare_steps(tm, latents, context, y, steps: int, generator, clock) -> str:
    """The floor any adapter trainer sits on: forward + backward of the frozen model with
    gradients to the input only (the backward pass has to cross the whole model)."""
    import torch

    b = latents.shape[0]
    for _ in range(steps):
        x = latents.to(tm.device).requires_grad_(True)
        t = torch.randint(0, 1000, (b,), generator=generator).to(tm.device)
        conditioning = (context.repeat(b, 1, 1),) if y is None else (context.repeat(b, 1, 1), y)
        loss = (tm.predict(x, t, *conditioning) - x.detach()).square().mean()
        loss.backward()
        clock.stamp()
    return "no adapter: gradients to the input only"


# -- timing ---------------------------------------------------------------------------------

def sync() -> None:
    """Waits for the GPU's queued work, so a clock read after it covers that work."""
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn) -> float:
    """Seconds fn takes, the device synced before and after."""
    sync()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t


def interleaved(fns: dict, rounds: int, warmup: int = 1, measure=timed) -> dict[str, list[float]]:
    """Times each fn in rounds of A B .. B A after `warmup` untimed calls of each, so slow
    drift of the machine (clocks, other load) hits every variant alike. measure(fn): one
    measurement (default: fn's wall time; sampler_step_time's fns return their own)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in fns}
    for _ in range(rounds):
        for name in list(fns) + list(reversed(fns)):
            times[name].append(measure(fns[name]))
    return times


def sampler_step_time(model, noise, latent, steps: int, cfg: float, scheduler: str, positive, negative) -> float:
    """Mean time between core's euler sampler step callbacks: the steps alone, without the
    per-call set-up (model load, conditioning, a first call's one-off work such as guide
    embeddings)."""
    import comfy.sample

    stamps = []

    def callback(step, x0, x, total):
        sync()
        stamps.append(time.perf_counter())

    comfy.sample.sample(model, noise, steps, cfg, "euler", scheduler, positive, negative, latent,
                        callback=callback, disable_pbar=True, seed=1)
    return (stamps[-1] - stamps[0]) / (len(stamps) - 1)


def median(values) -> float:
    return statistics.median(values)


class StepClock:
    """Stamps the end of every optimizer step of any torch optimizer (a global step hook,
    the device synced first), so two trainers are timed at the same point of their step."""

    def __init__(self):
        self.stamps: list[float] = []

    def __enter__(self):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self._handle = register_optimizer_step_post_hook(self.stamp)
        return self

    def stamp(self, *_):
        sync()
        self.stamps.append(time.perf_counter())

    def __exit__(self, *exc):
        self._handle.remove()

    def step_times(self, warmup: int) -> list[float]:
        """Seconds of each step after the first `warmup` ones (a step ends at its stamp)."""
        return [t1 - t0 for t0, t1 in zip(self.stamps, self.stamps[1:])][max(0, warmup - 1):]


class Peak:
    """Peak memory over a block: CUDA's allocator counter on a GPU, else RSS growth sampled
    every 2 ms."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available()
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


# -- the apply benchmarks (bare model vs one vs two adapters while sampling) -------------------

def apply_options(parser):
    """Adds the options the apply benchmarks share (each adds its own --full-* flag first) and
    parses them; --smoke sets the smallest settings and one torch thread."""
    parser.add_argument("--resolution", type=int, default=None, help="square picture size (default 128 tiny, 1024 full)")
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="fp32")
    parser.add_argument("--steps", type=int, default=None, help="sampler steps per measurement, >= 2 (default 3 tiny, 8 full)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds (each times every variant twice)")
    parser.add_argument("--cpu", action="store_true", help="stay on the CPU even if torch sees a GPU")
    parser.add_argument("--smoke", action="store_true", help="smallest settings: 64 px, 2 steps, 1 round (a few seconds)")
    opts = parser.parse_args()
    if opts.smoke:
        opts.resolution, opts.steps, opts.rounds = opts.resolution or 64, 2, 1
        smoke_threads()
    return opts


def apply_report(times: dict[str, list[float]], goal: str) -> None:
    """Per-variant step times ("bare", "one LLLite", "two LLLites") and the overhead ratios."""
    base = median(times["bare"])
    for name, ts in times.items():
        print(f"  {name:12s} {median(ts) * 1000:9.2f} ms/step  (min {min(ts) * 1000:.2f}, max {max(ts) * 1000:.2f})")
    for name in ("one LLLite", "two LLLites"):
        ratio(f"{name} / bare step time", median(times[name]) / base)
    ratio("overhead per LLLite", (median(times["two LLLites"]) / base - 1) / 2 + 1, goal)


# -- one process per run ----------------------------------------------------------------------

def run_variants(base_cmd: list[str], variants: list[str], rounds: int, worker, opts, separate: bool = True) -> dict:
    """Runs each variant in rounds of A B .. B A and returns {variant: [result, ...]}.
    separate: each run in its own process `base_cmd + ["--variant", v]` (so peak memory is
    that run's), whose worker prints one RESULT line; otherwise worker(opts with .variant)
    in this process, once per variant (the quick smoke path)."""
    results = {v: [] for v in variants}
    order = (variants + variants[::-1]) * rounds if separate else variants
    for variant in order:
        if separate:
            proc = subprocess.run(base_cmd + ["--variant", variant], capture_output=True, text=True)
            line = next((l for l in proc.stdout.splitlines() if l.startswith("RESULT ")), None)
            if proc.returncode or line is None:
                sys.exit(f"{variant} run failed:\n{proc.stderr[-3000:]}")
            r = json.loads(line[len("RESULT "):])
        else:
            opts.variant = variant
            r = worker(opts)
        results[variant].append(r)
        print(f"  {variant:<14} median step {median(r['times']) * 1000:9.1f} ms  peak {r['peak'] / 2**20:8.1f} MiB", flush=True)
    return results


def print_result(result: dict) -> None:
    """The worker process's answer to run_variants."""
    print("RESULT " + json.dumps(result), flush=True)


# -- reporting ------------------------------------------------------------------------------

def machine() -> str:
    """CPU model and cores, GPU name, torch and Python versions."""
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        cpu = next(l.split(":", 1)[1].strip() for l in Path("/proc/cpuinfo").read_text().splitlines() if l.startswith("model name"))
    except (OSError, StopIteration):
        pass
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    return (f"{cpu} ({os.cpu_count()} cores, torch threads {torch.get_num_threads()}), {gpu}, "
            f"torch {torch.__version__}, Python {platform.python_version()}")


def ratio(label: str, value: float, note: str = "") -> None:
    print(f"{RATIO_PREFIX} {label:<44} x{value:.3f}" + (f"   ({note})" if note else ""), flush=True)


class FixedText:
    """The engine's text interface over fixed tensors (speed does not depend on the captions)."""

    def __init__(self, context, pooled):
        self.context, self.pooled = context, pooled

    def encode(self, captions, device, prompts=False):
        n = len(captions)
        return self.context.repeat(n, 1, 1).to(device), None if self.pooled is None else self.pooled.repeat(n, 1).to(device)

    def modules(self):
        return {}


class OneBatch:
    """The engine's data interface: the same batch, one per epoch."""

    def __init__(self, batch):
        self.batch = batch

    def __len__(self):
        return 1

    def batches(self, epoch, start=0):
        yield from ([self.batch] if start == 0 else [])


def lllite_train_options(parser, full_flag: str, full_help: str) -> None:
    """The options the LLLite training benches share; `full_flag` picks the full-size model."""
    parser.add_argument(full_flag, action="store_true", help=full_help)
    parser.add_argument("--smoke", action="store_true",
                        help="smallest settings, each variant once in this process (a few seconds)")
    parser.add_argument("--resolution", type=int, help=f"image side in pixels; default 256, 1024 with {full_flag}")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--bf16", action="store_true", help="bf16 weights and autocast (LLLite weights stay fp32)")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--cond-emb-dim", type=int, default=32)
    parser.add_argument("--network-dim", type=int, default=64)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1, help="each round runs lllite, bare, bare, lllite")
    parser.add_argument("--variant", choices=["lllite", "bare"], help=argparse.SUPPRESS)


def run_lllite_train_variants(script: str, opts, worker, full_flag: str) -> dict:
    """Each variant (LLLite step, bare forward+backward) in its own process, A B B A."""
    base = [sys.executable, script, "--resolution", str(opts.resolution), "--batch", str(opts.batch),
            "--cond-emb-dim", str(opts.cond_emb_dim), "--network-dim", str(opts.network_dim),
            "--steps", str(opts.steps), "--warmup", str(opts.warmup)]
    full = getattr(opts, full_flag.lstrip("-").replace("-", "_"))
    base += [flag for flag, on in ((full_flag, full), ("--bf16", opts.bf16),
                                   ("--gradient-checkpointing", opts.gradient_checkpointing)) if on]
    return run_variants(base, ["lllite", "bare"], opts.rounds, worker, opts, separate=not opts.smoke)


def report_lllite_train(results: dict, opts, model: str, bare_label: str) -> tuple[dict, dict]:
    """Prints the setting, each variant's median step and peak, and the step-time ratio;
    returns the medians and peaks by variant."""
    info = {v: rs[0]["info"] for v, rs in results.items()}
    bootstrap()
    print(f"\nmachine: {machine()}")
    print(f"setting: {model}, {opts.resolution}x{opts.resolution} px, batch {opts.batch}, cond_emb_dim {opts.cond_emb_dim} / "
          f"network_dim {opts.network_dim}, {'bf16' if opts.bf16 else 'fp32'}, gradient checkpointing "
          f"{'on' if opts.gradient_checkpointing else 'off'}, AdamW, {opts.steps} timed steps x {len(results['bare'])} runs each")
    med = {v: median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: median([r["peak"] for r in rs]) for v, rs in results.items()}
    for v, label in (("lllite", "LLLite training step"), ("bare", bare_label)):
        print(f"{label:<21} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:9.1f} MiB   [{info[v]}]")
    print()
    ratio("LLLite / bare step time", med["lllite"] / med["bare"])
    return med, peak
