"""LoRA extraction from two full-size SDXL U-Nets on CPU: our randomized SVD
(torch.svd_lowrank, oversampled and power-iterated, training/lora/tools/common.py) against
the exact torch.linalg.svd sd-scripts' extract_lora_from_models.py runs, in the same
process on the same differences. Reported: total time of each, and per module the relative
Frobenius error ||diff - up @ down|| / ||diff|| of both at the same rank, with how much ours
is above the exact truncated SVD's (the optimum at that rank).

Layers: every layer our LoRA targets in the SDXL base U-Net (LierLa; --conv adds C3Lier's
res blocks and 3x3 convs), names and shapes from a U-Net built on the meta device. Weights
are random (the issue allows it): base and tuned are drawn per module, one module at a time,
so memory stays at one layer. A random difference has a flat spectrum: the hardest case for
a randomized SVD.

    .venv/bin/python bench/bench_lora_extract.py              # every module, dim 4 (minutes, the exact side most of it)
    .venv/bin/python bench/bench_lora_extract.py --dim 32 --conv
    .venv/bin/python bench/bench_lora_extract.py --stride 7   # every 7th module, whole-U-Net time projected
    .venv/bin/python bench/bench_lora_extract.py --smoke      # seconds: a few modules, one thread
"""
import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402


def sdxl_layers(conv: bool) -> dict[str, tuple[int, ...]]:
    """kohya module name -> weight shape of the full SDXL U-Net's LoRA targets."""
    import torch

    import comfy.ldm.modules.diffusionmodules.openaimodel as openaimodel
    import comfy.ops
    from lllite_kit.training.lora.targets import unet_targets

    config = dict(benchlib.SDXL_FULL_UNET)
    with torch.device("meta"):
        unet = openaimodel.UNetModel(**config, operations=comfy.ops.disable_weight_init, device="meta")
    return {t.name: tuple(t.module.weight.shape) for t in unet_targets(unet, "sdxl", config, with_conv_blocks=conv)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dim", type=int, default=4)
    p.add_argument("--conv", action="store_true", help="C3Lier layers too (3x3 convs at --dim)")
    p.add_argument("--limit", type=int, default=None, help="only the first N modules")
    p.add_argument("--stride", type=int, default=None,
                   help="every N-th module in U-Net order (N coprime to a transformer block's 10 layers keeps "
                        "the mix of shapes); the whole U-Net's times are projected from the mean time per shape")
    p.add_argument("--smoke", action="store_true", help="a few modules of each kind, one thread")
    opts = p.parse_args()
    benchlib.bootstrap(cpu=True)
    if opts.smoke:
        benchlib.smoke_threads()
    import torch

    from lllite_kit.training.lora.tools.common import factor

    layers = sdxl_layers(opts.conv)
    names = list(layers)
    if opts.smoke:  # one layer of each distinct shape, at most 4
        seen, picked = set(), []
        for n in names:
            if layers[n] not in seen:
                seen.add(layers[n])
                picked.append(n)
        names = picked[:4]
    elif opts.limit:
        names = names[: opts.limit]
    elif opts.stride:
        names = names[:: opts.stride]
    print(benchlib.machine())
    print(f"SDXL U-Net: {len(layers)} LoRA layers, extracting {len(names)} at dim {opts.dim}, "
          f"{torch.get_num_threads()} threads", flush=True)

    g = torch.Generator().manual_seed(0)
    times = {"exact": 0.0, "lowrank": 0.0}
    per_shape: dict[tuple, dict[str, list[float]]] = {}  # shape -> method -> seconds per module
    excess = []
    worst = ("", 0.0, 0.0, 0.0)
    for n in names:
        shape = layers[n]
        base = torch.randn(shape, generator=g) * 0.02
        tuned = base + torch.randn(shape, generator=g) * 0.002
        diff = tuned - base
        mat = diff.reshape(shape[0], -1)
        errs = {}
        for method in ("exact", "lowrank"):
            t0 = time.perf_counter()
            up, down = factor(diff, min(opts.dim, shape[0], shape[1]), method, clamp_quantile=None)
            seconds = time.perf_counter() - t0
            times[method] += seconds
            per_shape.setdefault(shape, {"exact": [], "lowrank": []})[method].append(seconds)
            errs[method] = float((mat - up.reshape(shape[0], -1) @ down.reshape(up.shape[1], -1)).norm() / mat.norm())
        over = errs["lowrank"] / errs["exact"] - 1
        excess.append(over)
        if over >= worst[1]:
            worst = (n, over, errs["exact"], errs["lowrank"])
        if opts.smoke or len(names) <= 20:
            print(f"  {n:70} {str(shape):22} error exact {errs['exact']:.6f} ours {errs['lowrank']:.6f} (+{over:.4%})")
        elif len(excess) % 50 == 0:
            print(f"  {len(excess)}/{len(names)} modules: exact {times['exact']:.1f} s, ours {times['lowrank']:.1f} s", flush=True)
    mean = sum(excess) / len(excess)
    print(f"time exact torch.linalg.svd {times['exact']:.2f} s, ours (svd_lowrank) {times['lowrank']:.2f} s "
          f"({len(names)} modules)")
    if len(names) < len(layers) and not opts.smoke:
        counts = {}
        for shape in layers.values():
            counts[shape] = counts.get(shape, 0) + 1
        if set(counts) <= set(per_shape):
            full = {m: sum(sum(per_shape[s][m]) / len(per_shape[s][m]) * c for s, c in counts.items()) for m in times}
            print(f"projected for all {len(layers)} modules (mean time per shape x its count): exact {full['exact']:.0f} s, "
                  f"ours {full['lowrank']:.0f} s")
    print(f"relative error above the exact truncated SVD: mean {mean:.4%}, worst {worst[1]:.4%} ({worst[0]}: "
          f"exact {worst[2]:.6f}, ours {worst[3]:.6f})")
    benchlib.ratio("extract speed, exact SVD / ours", times["exact"] / max(times["lowrank"], 1e-9))
    benchlib.ratio("extract error, ours / exact (worst module)", 1 + worst[1], "goal: at most x1.010")


if __name__ == "__main__":
    main()
