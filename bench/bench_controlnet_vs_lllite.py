"""What a distilled LLLite saves: sampling step time of the bare model, the model with one
ControlNet-LLLite, and the model with one full ControlNet (core's ControlNet, made from the same
U-Net as ControlNet training starts) - the same sampler, steps, CFG and guide size, in one run,
interleaved, medians - plus each control's parameter count.

    .venv/bin/python bench/bench_controlnet_vs_lllite.py                       # tiny SDXL-layout model on CPU
    .venv/bin/python bench/bench_controlnet_vs_lllite.py --full-sdxl --resolution 1024 --dtype fp16   # on a GPU
    .venv/bin/python bench/bench_controlnet_vs_lllite.py --smoke

--full-sdxl: the full-size SDXL U-Net (random weights; speed does not depend on values), a full
SDXL ControlNet (1.25 B parameters) and an LLLite of kohya's released size (E32/R64)."""
import argparse
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchlib  # noqa: E402
from bench_lllite_apply import _random_lllite, sdxl_setup  # noqa: E402


def _controlnet(model, dtype, folder: Path):
    """Core's ControlNet object for a ControlNet made from `model`'s U-Net, through a file."""
    import comfy.controlnet

    from lllite_kit.training.controlnet.network import controlnet_from_unet
    from lllite_kit.training.controlnet.weights import save_controlnet

    control = controlnet_from_unet(model.model.diffusion_model, model.model.model_config.unet_config)
    params = sum(p.numel() for p in control.parameters())
    path = folder / "controlnet.safetensors"
    save_controlnet(str(path), control, dtype, {})
    return comfy.controlnet.load_controlnet(str(path)), params


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net and ControlNet (random weights)")
    opts = benchlib.apply_options(parser)
    benchlib.bootstrap(cpu=opts.cpu)
    sys.path.insert(0, str(benchlib.REPO / "tests"))
    import nodes

    from lllite_kit.lllite.patch import apply_lllite

    import controlnet_testing  # tiny SDXL-layout model with the attention heads core reads ControlNets with

    dtype = benchlib.torch_dtype(opts.dtype)
    resolution, steps, model, positive, negative, dims = sdxl_setup(opts, controlnet_testing.build_model)
    guide = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    lllite = _random_lllite(model, *dims, 1)
    with tempfile.TemporaryDirectory() as tmp:
        control, control_params = _controlnet(model, dtype, Path(tmp))
    cn_positive, cn_negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control, guide.movedim(1, -1), 1.0, 0.0, 1.0)
    latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
    import comfy.sample

    noise = comfy.sample.prepare_noise(latent, 1)
    runs = {"bare": (model, positive, negative), "LLLite": (apply_lllite(model, lllite, guide, 1.0), positive, negative),
            "ControlNet": (model, cn_positive, cn_negative)}
    fns = {name: lambda r=r: benchlib.sampler_step_time(r[0], noise, latent, steps, 7.0, "normal", r[1], r[2])
           for name, r in runs.items()}
    for fn in fns.values():  # warm-up: model and control loading, guide embeddings
        fn()
    times = benchlib.interleaved(fns, opts.rounds, warmup=0, measure=lambda fn: fn())

    lllite_params = sum(p.numel() for p in lllite.parameters())
    print(f"machine: {benchlib.machine()}")
    print(f"{'full-size' if opts.full_sdxl else 'tiny'} SDXL-layout U-Net, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, "
          f"euler {steps} steps x {2 * opts.rounds} runs per variant")
    print(f"parameters: LLLite {lllite_params / 1e6:.1f} M, ControlNet {control_params / 1e6:.1f} M")
    base = benchlib.median(times["bare"])
    for name, ts in times.items():
        print(f"  {name:10s} {benchlib.median(ts) * 1000:9.2f} ms/step")
    benchlib.ratio("LLLite / bare step time", benchlib.median(times["LLLite"]) / base)
    benchlib.ratio("ControlNet / bare step time", benchlib.median(times["ControlNet"]) / base)
    benchlib.ratio("ControlNet / LLLite step time", benchlib.median(times["ControlNet"]) / benchlib.median(times["LLLite"]),
                   "what distilling the ControlNet into an LLLite saves per step")


if __name__ == "__main__":
    main()
