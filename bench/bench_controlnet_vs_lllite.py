"""What a distilled LLLite saves: sampling step time of the bare model, the model with one
ControlNet-LLLite, and the model with one full ControlNet (core's ControlNet, made from the same
U-Net as ControlNet training starts) - the same sampler, steps, CFG and guide size, in one run,
interleaved, medians - plus each control's parameter count.

    .venv/bin/python bench/bench_controlnet_vs_lllite.py                       # tiny SDXL-layout model on CPU
    .venv/bin/python bench/bench_controlnet_vs_lllite.py --full-sdxl --resolution 1024 --dtype fp16   # on a GPU
    .venv/bin/python bench/bench_controlnet_vs_lllite.py --smoke
    .venv/bin/python bench/bench_controlnet_vs_lllite.py --distilled        # + a distilled LLLite vs its teacher

--full-sdxl: the full-size SDXL U-Net (random weights; speed does not depend on values), a full
SDXL ControlNet (1.25 B parameters) and an LLLite of kohya's released size (E32/R64), also with
modules on the output blocks (lllite_output_blocks, as distillation uses by default).
--distilled (tiny SD1.5, CPU): a ControlNet trained on the Fill50K-like task is distilled into an
LLLite (tests/distill_evidence.py); the controllability (edge F1, its chance level, and control =
F1 - chance) of the teacher, the distilled LLLite and an untrained LLLite on fresh guides, the
held-out distance to the teacher's prediction, and the sampling step cost of the distilled LLLite
and its teacher, in the same run (about 30 minutes on a 2-core CPU). Goal: the student keeps
>= 90 % of the teacher's control."""
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


def step_times(model, lllites: dict, control, positive, negative, guide, resolution: int, steps: int, rounds: int) -> dict:
    """Sampler step times (lists, interleaved) of the bare model, the model with each of
    `lllites` (name -> LLLite network) and with `control` (core's ControlNet object), one guide, CFG 7."""
    import comfy.sample
    import nodes

    from lllite_kit.lllite.patch import apply_lllite

    cn_positive, cn_negative = nodes.ControlNetApplyAdvanced().apply_controlnet(
        positive, negative, control, guide.movedim(1, -1), 1.0, 0.0, 1.0)
    latent = torch.zeros(1, 4, resolution // 8, resolution // 8)
    noise = comfy.sample.prepare_noise(latent, 1)
    runs = {"bare": (model, positive, negative),
            **{name: (apply_lllite(model, lllite, guide, 1.0), positive, negative) for name, lllite in lllites.items()},
            "ControlNet": (model, cn_positive, cn_negative)}
    fns = {name: lambda r=r: benchlib.sampler_step_time(r[0], noise, latent, steps, 7.0, "normal", r[1], r[2])
           for name, r in runs.items()}
    for fn in fns.values():  # warm-up: model and control loading, guide embeddings
        fn()
    return benchlib.interleaved(fns, rounds, warmup=0, measure=lambda fn: fn())


def report_costs(times: dict) -> None:
    base, control = benchlib.median(times["bare"]), benchlib.median(times["ControlNet"])
    for name, ts in times.items():
        print(f"  {name:22s} {benchlib.median(ts) * 1000:9.2f} ms/step")
    lllites = [name for name in times if name not in ("bare", "ControlNet")]
    for name in lllites:
        benchlib.ratio(f"{name} / bare step time", benchlib.median(times[name]) / base, "goal < 1.05")
    benchlib.ratio("ControlNet / bare step time", control / base)
    for name in lllites:
        benchlib.ratio(f"ControlNet / {name} step time", control / benchlib.median(times[name]),
                       "what distilling the ControlNet into an LLLite saves per step")


def distilled(opts) -> None:
    """A ControlNet trained on the Fill50K-like task, distilled into an LLLite: controllability on
    fresh guides (teacher, distilled, untrained), distance to the teacher, step costs."""
    import comfy.controlnet

    import distill_evidence
    import lllite_testing
    import tiny_models
    from lllite_kit.lllite.weights import read_lllite

    s = distill_evidence.Settings(images=opts.images, teacher_steps=opts.teacher_steps, student_steps=opts.student_steps,
                                  student_lr=3e-3, cond_emb_dim=32, network_dim=64,
                                  student_min_timestep=opts.student_min_timestep, student_seed=opts.student_seed,
                                  scored_guides=opts.scored_guides)
    if opts.smoke:
        s = distill_evidence.Settings(images=4, holdout=2, teacher_steps=2, student_steps=2, check_images=1, scored_guides=2)
    with tempfile.TemporaryDirectory() as tmp:
        e = distill_evidence.run_evidence(tiny_models, Path(tmp), s)
        student, control = read_lllite(str(e.student_path)), comfy.controlnet.load_controlnet(str(e.teacher_path))
    model = distill_evidence.base_model(s)
    positive, negative = lllite_testing.conditioning("sd15")
    guide = distill_evidence.fill_pairs(1, s, seed=s.seed + 1)[1]
    times = step_times(model, {"LLLite": student}, control, positive, negative, guide, 64, opts.steps, opts.rounds)

    (_, first), (_, last) = e.student[0], e.student[-1]
    print(f"machine: {benchlib.machine()}")
    print(f"tiny SD1.5 (64 channels; self-attention made local, output x{s.output_scale:g}: tests/distill_evidence.py), "
          f"Fill50K-like task at 64 px, {s.images} training images; teacher: ControlNet trained {s.teacher_steps} steps "
          f"(lr {s.teacher_lr}, timesteps {s.min_timestep}-999); student: LLLite E{s.cond_emb_dim}/R{s.network_dim}"
          f"{' with output blocks' if s.output_blocks else ''} distilled {s.student_steps} steps "
          f"(lr {s.student_lr}, timesteps {s.student_min_timestep}-999, seed +{s.student_seed})")
    print(f"controllability: Canny ({s.canny[0]:g}/{s.canny[1]:g}) edge F1, tolerance {s.tolerance:g} px, of one sample "
          f"({s.sample_steps} step, fixed seeds) per guide on {s.scored_guides} fresh guides; chance level: the same "
          "pictures against the other guides; control = F1 - chance")
    for name, (f1, chance) in e.scores.items():
        print(f"  {name:<30} F1 {f1:.4f}   chance {chance:.4f}   control {f1 - chance:+.4f}")
    print(f"held-out MSE to the teacher's prediction: LLLite {first['student_mse']:.4f} at step 0 -> {last['student_mse']:.4f} "
          f"at step {e.student[-1][0]} (bare model {last['bare_mse']:.4f})")
    teacher, distilled = e.above_chance("teacher"), e.above_chance("distilled")
    if teacher > 0 and distilled > 0:  # a ratio of controls means something only when both have some
        benchlib.ratio("distilled / teacher control (F1 - chance)", distilled / teacher, "goal >= 0.9")
    else:
        print(f"  no ratio of controls: teacher {teacher:+.4f}, distilled {distilled:+.4f} (F1 - chance)")
    print(f"  untrained LLLite's control {e.above_chance('untrained'):+.4f}: a guide-blind picture scores its chance level")
    benchlib.ratio("LLLite MSE to teacher, end / start", last["student_mse"] / first["student_mse"])
    print(f"sampling step cost, 64x64, CFG batch 2, euler {opts.steps} steps x {2 * opts.rounds} runs per variant "
          "(LLLite = the distilled one, ControlNet = its teacher)")
    report_costs(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--full-sdxl", action="store_true", help="full-size SDXL U-Net and ControlNet (random weights)")
    parser.add_argument("--distilled", action="store_true", help="distil a trained tiny ControlNet into an LLLite and "
                        "compare controllability and step cost (tiny SD1.5)")
    parser.add_argument("--teacher-steps", type=int, default=400, help="--distilled: ControlNet training steps")
    parser.add_argument("--student-steps", type=int, default=2000, help="--distilled: distillation steps")
    parser.add_argument("--scored-guides", type=int, default=256,
                        help="--distilled: fresh guides the finished networks are scored on (one student kept 89 %% of its "
                        "teacher's control on 64 guides, 103 %% on 256)")
    parser.add_argument("--images", type=int, default=48, help="--distilled: training images of the Fill50K-like task")
    parser.add_argument("--student-min-timestep", type=int, default=900,
                        help="--distilled: the distillation's lowest timestep (the check samples at t = 999)")
    parser.add_argument("--student-seed", type=int, default=0, help="--distilled: added to the seed of the distillation run")
    opts = benchlib.apply_options(parser)
    benchlib.bootstrap(cpu=opts.cpu)
    sys.path.insert(0, str(benchlib.REPO / "tests"))
    opts.steps = opts.steps or (8 if opts.full_sdxl else 3)
    if opts.distilled:
        distilled(opts)
        return

    import controlnet_testing  # tiny SDXL-layout model with the attention heads core reads ControlNets with

    dtype = benchlib.torch_dtype(opts.dtype)
    resolution, steps, model, positive, negative, dims = sdxl_setup(opts, controlnet_testing.build_model)
    guide = torch.rand(1, 3, resolution, resolution, generator=torch.Generator().manual_seed(1))
    lllites = {"LLLite": _random_lllite(model, *dims, 1),
               "LLLite + output blocks": _random_lllite(model, *dims, 1, output_blocks=True)}
    with tempfile.TemporaryDirectory() as tmp:
        control, control_params = _controlnet(model, dtype, Path(tmp))
    times = step_times(model, lllites, control, positive, negative, guide, resolution, steps, opts.rounds)
    params = ", ".join(f"{name} {sum(p.numel() for p in n.parameters()) / 1e6:.1f} M" for name, n in lllites.items())
    print(f"machine: {benchlib.machine()}")
    print(f"{'full-size' if opts.full_sdxl else 'tiny'} SDXL-layout U-Net, {resolution}x{resolution}, {opts.dtype}, CFG batch 2, "
          f"euler {steps} steps x {2 * opts.rounds} runs per variant")
    print(f"parameters: {params}, ControlNet {control_params / 1e6:.1f} M")
    report_costs(times)


if __name__ == "__main__":
    main()
