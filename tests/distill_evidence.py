"""Issue 18's evidence on tiny models: a ControlNet trained on the Fill50K-like task (a disk's
outline in a colour as the guide, the filled disk as the picture, an 8x8 average pool as the
"VAE"; test_lllite_training) teaches an LLLite, and the controllability of held-out samples
(Canny edge F1 of the sampled picture against the guide) is measured for the teacher, the
distilled LLLite and an untrained LLLite, with the same guides, seeds and sampler.

Shared by tests/test_distill_evidence.py (smallest settings) and
bench/bench_controlnet_vs_lllite.py (more steps, numbers for docs/controllability.md)."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

import comfy.controlnet
from controlnet_testing import build_model, write_controlnet
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.control_gap import ControlGap
from lllite_kit.training.controllability.check import CheckOptions, ControllabilityCheck, combined
from lllite_kit.training.controlnet.adapter import ControlNetAdapter
from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.distill.adapter import DistillationAdapter
from lllite_kit.training.distill.evaluate import TeacherAgreement
from lllite_kit.training.distill.teacher import ControlNetTeacher
from lllite_kit.training.engine import TrainHooks, TrainingEngine
from lllite_kit.training.lllite_adapter import LLLiteAdapter
from lllite_kit.training.lora import training_metadata
from lllite_kit.training.session import data_facts
from test_lllite_training import fill_task, pooled_latents

CAPTION = "a filled circle"


@dataclass
class Settings:
    images: int = 12  # training images (+ holdout held out)
    holdout: int = 4
    teacher_steps: int = 40
    teacher_lr: float = 2e-3
    student_steps: int = 40
    student_lr: float = 1e-2
    cond_emb_dim: int = 8
    network_dim: int = 16
    sample_steps: int = 1  # the check's sampler steps (the task is learnt at high noise: t >= min_timestep)
    check_images: int = 4
    tolerance: float = 4.0  # half an 8x8 latent pixel: the picture is the pooled disk, upsampled
    min_timestep: int = 500
    seeded_teacher: bool = True  # start the teacher from a seeded ControlNet whose zero convolutions act (not zero)
    validate_every: int = 0  # 0: start and end only
    seed: int = 0


@dataclass
class Evidence:
    teacher_path: Path
    student_path: Path
    teacher: list = field(default_factory=list)  # (step, {control_gap ..., controllability ...}) of the teacher's run
    student: list = field(default_factory=list)  # (step, {student_mse, bare_mse, controllability ...}) of the distillation
    teacher_controllability: float = 0.0  # the trained ControlNet's, with the check of the distillation

    @property
    def untrained(self) -> float:
        return self.student[0][1]["controllability"]

    @property
    def distilled(self) -> float:
        return self.student[-1][1]["controllability"]


def fill_pairs(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n Fill50K-like (image, guide) pairs without the black disks (a black outline on black is no guide)."""
    images, guides = fill_task(3 * n, seed=seed)
    keep = [i for i in range(3 * n) if guides[i].amax() > 0][:n]
    return images[keep], guides[keep]


def pooled_decoder(latent_format):
    """Sampled latents -> pictures in 0..1: pooled_latents undone up to the pooling."""
    return lambda z: F.interpolate(latent_format.process_in(z)[:, :3], scale_factor=8, mode="nearest") * 0.5 + 0.5


def _data(s: Settings) -> TrainingData:
    images, guides = fill_pairs(s.images + s.holdout, s.seed)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, CAPTION, guides))],
                            resolution=(64, 64), batch_size=2)
    return TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=s.seed, size_multiple=64,
                        require_guides=True, holdout=s.holdout)


def _run(model, clip, data, s: Settings, out: Path, name: str, steps: int, lr: float, make_adapter, evaluators,
         progress=None):
    cfg = TrainConfig(max_train_steps=steps, learning_rate=lr, seed=s.seed, v_parameterization=True,
                      min_timestep=s.min_timestep, validate_every_n_steps=s.validate_every, save_precision="float",
                      output_name=name, save_state=False)
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sd15")
        text.precompute(data.fixed_captions())
        with trainable_model(model, v_parameterization=True) as tm:
            adapter = make_adapter(tm)
            hooks = TrainHooks(evaluated=progress)
            engine = TrainingEngine(cfg, tm, text, adapter, data, out, training_metadata,
                                    {**data_facts(data)[0], "sd_model_name": "tiny"}, hooks=hooks)
            holdout = data.holdout_batches()
            check = ControllabilityCheck(tm, text, adapter, holdout, _check_options(s),
                                         pooled_decoder(model.model.latent_format), seed=s.seed)
            hooks.evaluate = combined(*(e(tm, text, adapter, holdout) for e in evaluators), check)
            return engine.run()


def _check_options(s: Settings) -> CheckOptions:
    # the guides are coloured outlines: any colour counts as an edge
    return CheckOptions("canny", s.check_images, s.sample_steps, tolerance=s.tolerance, edge_threshold=0.05)


def run_evidence(tiny, out: Path, s: Settings = Settings(), progress=None) -> Evidence:
    """Trains the teacher, distils it, and measures the three controllabilities."""
    model, clip = build_model("sd15", seed=s.seed), tiny.build_clip("sd15", seed=s.seed)
    data = _data(s)
    unet_config = model.model.model_config.unet_config
    gap = lambda tm, text, adapter, holdout: ControlGap(tm, text, adapter, holdout, (s.min_timestep, 1000))  # noqa: E731
    start = str(write_controlnet(out / "teacher_start.safetensors", model, seed=s.seed + 1)) if s.seeded_teacher else None
    teacher_run = _run(model, clip, data, s, out, "teacher", s.teacher_steps, s.teacher_lr,
                       lambda tm: ControlNetAdapter(unet_config, "sd15", control_weights=start), [gap], progress)
    control = comfy.controlnet.load_controlnet(str(teacher_run.final_path))
    teacher = ControlNetTeacher(control, name="teacher.safetensors")
    agreement = lambda tm, text, adapter, holdout: TeacherAgreement(tm, text, adapter, holdout, (s.min_timestep, 1000))  # noqa: E731
    student_run = _run(model, clip, data, s, out, "student", s.student_steps, s.student_lr,
                       lambda tm: DistillationAdapter(tm, teacher, "sd15", cond_emb_dim=s.cond_emb_dim,
                                                      network_dim=s.network_dim, name="student"), [agreement], progress)
    evidence = Evidence(teacher_run.final_path, student_run.final_path, teacher_run.evaluations, student_run.evaluations)
    evidence.teacher_controllability = teacher_run.evaluations[-1][1]["controllability"]
    return evidence
