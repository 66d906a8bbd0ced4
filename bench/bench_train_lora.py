"""LoRA training step time and peak memory: our trainer vs ComfyUI core's TrainLoraNode doing
the same work - the same U-Net layers get a LoRA of the same rank on both sides, gradients
clipped alike, both timed at the end of each optimizer step after a device sync - in two
comparisons: "attention only" (our default LierLa set: every Linear in the transformer
blocks) and "every layer" (every Linear and Conv2d of the U-Net, 3x3 convs included). Plus a
bare forward+backward of the frozen U-Net (the floor any adapter trainer sits on). Each run
is its own process (so peak memory is that run's), runs interleaved A B .. B A, medians of
the per-step times.

    .venv/bin/python bench/bench_train_lora.py                 # tiny SDXL on CPU, 256 px
    .venv/bin/python bench/bench_train_lora.py --full-sdxl     # full-size SDXL U-Net, 1024 px, bf16, GPU
    .venv/bin/python bench/bench_train_lora.py --smoke         # seconds: smallest settings, one process

Equal work needs two changes to core's node, made here in the bench process only: core
trains every weight, bias and norm of the model (LoRA on matrices, a full difference on 1-D
weights and biases); here it gets LoRA on exactly our layer set, built by its own
_create_weight_adapter, and no bias or norm differences (ours trains none). Core has no
gradient clipping; here its optimizer step clips to --max-grad-norm first, as ours does.
For "every layer" our adapter's layer list is widened to every Linear and Conv2d (our
LoRA's widest built-in set, C3Lier, leaves out conv_in, conv_out and the time/label
embeddings).

Weights are random (speed does not depend on their values); text conditioning is fixed
tensors of the right shapes. Memory: peak GPU allocation on a GPU, peak RSS growth over the
run on CPU (core's figure includes its second copy of the model, which it makes to train).
"""
import argparse
import contextlib
import functools
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402

# ours, core's training_dtype
PRECISION = {"fp32": ("no", "fp32"), "bf16": ("bf16", "bf16"), "fp16": ("fp16", "none")}
SCOPES = {"attn": "attention only", "all": "every layer"}
VARIANTS = ("ours-attn", "core-attn", "ours-all", "core-all", "bare")


def worker(opts) -> dict:
    """One run of one variant in this process; returns per-step seconds, peak bytes, facts."""
    benchlib.bootstrap()
    import torch

    import comfy.model_management

    model, ctx_dim, pooled_dim = _model(opts.full_sdxl, opts.dtype)
    g = torch.Generator().manual_seed(0)
    inputs = {"latents": torch.randn(opts.batch, 4, opts.size // 8, opts.size // 8, generator=g),
              "context": torch.randn(1, 77, ctx_dim, generator=g), "pooled": torch.randn(1, pooled_dim, generator=g)}
    side, _, scope = opts.variant.partition("-")
    paths = target_paths(model.model.diffusion_model, scope) if scope else []

    with benchlib.Peak() as peak, benchlib.StepClock() as clock:
        if side == "core":
            facts = _run_core(opts, model, inputs, paths)
        else:
            with torch.inference_mode(False):
                facts = _run_bare(opts, model, inputs, clock) if side == "bare" else _run_ours(opts, model, inputs, paths)
    comfy.model_management.soft_empty_cache()
    return {"times": clock.step_times(opts.warmup), "peak": peak.bytes, **facts}


@functools.lru_cache(maxsize=1)
def _model(full_sdxl: bool, dtype: str):
    """The U-Net and its text widths, built once per process: no variant changes its weights
    (core trains a copy, ours and bare restore it), so --smoke's variants share it."""
    if full_sdxl:
        return benchlib.build_full_sdxl(dtype), benchlib.SDXL_FULL_CONTEXT_DIM, benchlib.SDXL_FULL_POOLED_DIM
    import tiny_models

    return tiny_models.build_model("sdxl", 0), tiny_models.SDXL_CONTEXT_DIM, tiny_models.CLIP_G["projection_dim"]


def target_paths(diffusion_model, scope: str) -> list[str]:
    """U-Net layer paths both trainers put a LoRA on: our default (attention) set as our
    targets code picks it, or every Linear and Conv2d."""
    import torch

    from lllite_kit.training.lora.targets import unet_targets

    if scope == "all":
        return [n for n, m in diffusion_model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    path_of = {id(m): n for n, m in diffusion_model.named_modules()}
    return [path_of[id(t.module)] for t in unet_targets(diffusion_model, "sdxl", {}, with_conv_blocks=False)]


@contextlib.contextmanager
def _patched(obj, name, value):
    original = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, original)


def _run_core(opts, model, inputs, paths) -> dict:
    import torch

    import comfy_extras.nodes_train as core

    wanted = {f"diffusion_model.{p}" for p in paths}
    trained = {}

    def setup_same_layers(mp, existing_weights, algorithm, lora_dtype, rank):
        """Core's _setup_lora_adapters limited to our layers' weights (no bias/norm diffs)."""
        lora_sd, adapters = {}, []
        for n, m in mp.model.named_modules():
            if n in wanted:
                assert hasattr(m, "weight_function"), f"{n} is not a layer core's trainer can wrap"
                adapter, params = core._create_weight_adapter(m, n, existing_weights, algorithm, lora_dtype, rank)
                lora_sd.update(params)
                mp.add_weight_wrapper(f"{n}.weight", adapter)
                adapters.append(adapter)
        if len(adapters) != len(wanted):
            raise RuntimeError(f"core found {len(adapters)} of the {len(wanted)} layers")
        # core's LoRA also trains one 0-d alpha per layer: counted apart, it is no real work
        trained.update(modules=len(adapters), params=sum(p.numel() for p in lora_sd.values() if p.ndim),
                       scalars=sum(1 for p in lora_sd.values() if not p.ndim))
        return lora_sd, adapters

    original_init = core.TrainSampler.__init__

    def init_with_clipping(self, *a, **k):
        original_init(self, *a, **k)
        if opts.max_grad_norm:
            optimizer, step = self.optimizer, self.optimizer.step
            params = [p for group in optimizer.param_groups for p in group["params"]]

            def clipped_step(*sa, **sk):
                torch.nn.utils.clip_grad_norm_(params, opts.max_grad_norm)
                return step(*sa, **sk)
            optimizer.step = clipped_step

    b = opts.batch
    positive = [[inputs["context"], {"pooled_output": inputs["pooled"], "width": opts.size, "height": opts.size}]]
    with _patched(core, "_setup_lora_adapters", setup_same_layers), _patched(core.TrainSampler, "__init__", init_with_clipping):
        core.TrainLoraNode.execute(
            model=[model], latents=[{"samples": inputs["latents"]}], positive=[positive], batch_size=[b],
            grad_accumulation_steps=[1], steps=[opts.warmup + opts.steps], learning_rate=[1e-4], rank=[opts.rank],
            optimizer=["AdamW"], loss_function=["MSE"], seed=[0], training_dtype=[PRECISION[opts.dtype][1]],
            lora_dtype=["fp32"], quantized_backward=[False], algorithm=["LoRA"], gradient_checkpointing=[opts.checkpointing],
            checkpoint_depth=[1], offloading=[False], existing_lora=["[None]"], bucket_mode=[False], bypass_mode=[False])
    return trained


def _run_bare(opts, model, inputs, clock) -> dict:
    import torch

    from lllite_kit.training.comfy_bridge import trainable_model
    from lllite_kit.training.data.batch import Batch

    b, size, latents = opts.batch, opts.size, inputs["latents"]
    g = torch.Generator().manual_seed(1)
    batch = Batch(latents, ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b)
    with trainable_model(model, PRECISION[opts.dtype][0], opts.checkpointing) as tm:
        y = tm.adm(inputs["pooled"].repeat(b, 1), batch.original_sizes, batch.crop_top_left, batch.target_sizes)
        for _ in range(opts.warmup + opts.steps):
            x = latents.to(tm.device).requires_grad_(True)
            t = torch.randint(0, 1000, (b,), generator=g).to(tm.device)
            loss = (tm.predict(x, t, inputs["context"].repeat(b, 1, 1), y) - x.detach()).square().mean()
            loss.backward()
            clock.stamp()
    return {"modules": 0, "params": 0}


def _run_ours(opts, model, inputs, paths) -> dict:
    from lllite_kit.training.comfy_bridge import trainable_model
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.data.batch import Batch
    from lllite_kit.training.engine import TrainingEngine
    from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
    from lllite_kit.training.lora import adapter as adapter_module
    from lllite_kit.training.lora.targets import Target

    context, pooled = inputs["context"], inputs["pooled"]
    b, size = opts.batch, opts.size

    batch = Batch(inputs["latents"], ["x"] * b, [(size, size)] * b, [(0, 0)] * b, [(size, size)] * b)

    def these_layers(diffusion_model, family, unet_config, with_conv_blocks):
        layers = dict(diffusion_model.named_modules())
        return [Target("lora_unet_" + p.replace(".", "_"), layers[p], "unet") for p in paths]

    cfg = TrainConfig(max_train_steps=opts.warmup + opts.steps, learning_rate=1e-4, mixed_precision=PRECISION[opts.dtype][0],
                      save_state=False, gradient_checkpointing=opts.checkpointing, output_name="bench_lora",
                      max_grad_norm=opts.max_grad_norm)
    # conv_dim gives 3x3 convs their LoRA; every other layer gets dim
    lora = LoRAConfig(dim=opts.rank, alpha=opts.rank, conv_dim=opts.rank, conv_alpha=opts.rank, train_text_encoder=False)
    with trainable_model(model, cfg.mixed_precision, opts.checkpointing) as tm, \
            _patched(adapter_module, "unet_targets", these_layers), tempfile.TemporaryDirectory() as out:
        adapter = LoRAAdapter(lora, tm.model_config)
        TrainingEngine(cfg, tm, benchlib.FixedText(context, pooled), adapter, benchlib.OneBatch(batch), out, lambda facts: {}).run()
    if len(adapter.modules) != len(paths):
        raise RuntimeError(f"ours trained {len(adapter.modules)} of the {len(paths)} layers")
    return {"modules": len(adapter.modules), "params": sum(p.numel() for m in adapter.modules.values() for p in m.parameters())}


def report(opts, results: dict) -> None:
    benchlib.bootstrap()
    print(f"\nmachine: {benchlib.machine()}")
    model = "full-size SDXL U-Net" if opts.full_sdxl else "tiny SDXL-layout U-Net (tests/tiny_nodes)"
    print(f"setting: {model}, {opts.size}x{opts.size} px, batch {opts.batch}, rank {opts.rank}, {opts.dtype}, gradient "
          f"checkpointing {'on' if opts.checkpointing else 'off'}, gradient clipping "
          f"{opts.max_grad_norm or 'off'} on both sides, AdamW lr 1e-4, {opts.steps} timed steps x {len(next(iter(results.values())))} "
          f"runs each, timed at each optimizer step's end after a device sync")
    med = {v: benchlib.median([t for r in rs for t in r["times"]]) for v, rs in results.items()}
    peak = {v: benchlib.median([r["peak"] for r in rs]) for v, rs in results.items()}
    for scope, title in SCOPES.items():
        ours, core = f"ours-{scope}", f"core-{scope}"
        if ours not in med:
            continue
        print(f"\n{title}:")
        for v, label in ((ours, "ours (LLLite Kit)"), (core, "core TrainLoraNode")):
            if v in med:
                r = results[v][0]
                print(f"  {label:<20} step {med[v] * 1000:9.1f} ms   peak {peak[v] / 2**20:9.1f} MiB   "
                      f"[{r['modules']} LoRA layers, {r['params']:,} trainable parameters"
                      + (f" + {r['scalars']} alphas]" if r.get("scalars") else "]"))
        if core in med:
            benchlib.ratio(f"{title}: ours / core step time", med[ours] / med[core], "goal < 1")
            benchlib.ratio(f"{title}: ours / core peak memory", peak[ours] / peak[core], "goal < 1")
    if "bare" in med:
        print(f"\n  {'bare U-Net fwd+bwd':<20} step {med['bare'] * 1000:9.1f} ms   peak {peak['bare'] / 2**20:9.1f} MiB")
        if "ours-attn" in med:
            benchlib.ratio("attention only: ours / bare step time", med["ours-attn"] / med["bare"], "goal <= 1.15")


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net (GPU); defaults become 1024 px, bf16, checkpointing")
    p.add_argument("--smoke", action="store_true", help="smallest settings, every variant once in this process (a few seconds)")
    p.add_argument("--size", type=int, help="image side in pixels (latent side x8); default 256, 1024 with --full-sdxl")
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--rank", type=int, default=16)
    p.add_argument("--dtype", choices=list(PRECISION), help="default fp32 on CPU, bf16 with --full-sdxl")
    p.add_argument("--checkpointing", action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--max-grad-norm", type=float, default=1.0, help="gradient clipping on both sides (our default; 0 = off)")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=1, help="each round runs every variant twice, A B .. B A")
    p.add_argument("--variants", default=",".join(VARIANTS),
                   help="which to run; e.g. ours-attn,bare for full-size SDXL on a CPU, where core's second model copy needs 20 GB")
    p.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)
    opts = p.parse_args()
    if opts.smoke:
        opts.size, opts.rank, opts.steps, opts.warmup = opts.size or 64, 4, 1, 1
        benchlib.smoke_threads()
    opts.size = opts.size or (1024 if opts.full_sdxl else 256)
    opts.dtype = opts.dtype or ("bf16" if opts.full_sdxl else "fp32")
    opts.checkpointing = opts.full_sdxl if opts.checkpointing is None else opts.checkpointing
    if opts.variant:
        benchlib.print_result(worker(opts))
        return

    base = [sys.executable, __file__, "--size", str(opts.size), "--batch", str(opts.batch), "--rank", str(opts.rank),
            "--dtype", opts.dtype, "--steps", str(opts.steps), "--warmup", str(opts.warmup),
            "--max-grad-norm", str(opts.max_grad_norm), "--checkpointing" if opts.checkpointing else "--no-checkpointing"]
    base += ["--full-sdxl"] if opts.full_sdxl else []
    chosen = [v for v in VARIANTS if v in opts.variants.split(",")]
    report(opts, benchlib.run_variants(base, chosen, opts.rounds, worker, opts, separate=not opts.smoke))


if __name__ == "__main__":
    main()
