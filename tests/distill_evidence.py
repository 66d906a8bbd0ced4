"""Issue 18's evidence on tiny models: a ControlNet trained on the Fill50K-like task (a disk's
outline in a colour as the guide, the filled disk as the picture, an 8x8 average pool as the
"VAE"; test_lllite_training) teaches an LLLite, and the controllability of samples (Canny edge
F1 of the sampled picture against the guide, and its chance level: the same pictures against
other guides) is measured for the teacher, the distilled LLLite and an untrained LLLite, with
the same guides, seeds and sampler: during the runs on held-out guides, at the end on fresh ones.

Shared by tests/test_distill_evidence.py (smallest settings) and
bench/bench_controlnet_vs_lllite.py (more steps, numbers for docs/controllability.md)."""
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import comfy.controlnet
from controlnet_testing import build_model, write_controlnet
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.control_gap import ControlGap
from lllite_kit.training.controllability.check import CheckOptions, ControllabilityCheck, combined
from lllite_kit.training.controllability.maps import MapSettings
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
    output_blocks: bool = True  # the student's modules on the decoder too, where the teacher's residuals enter
    sample_steps: int = 1  # the check's sampler steps (the task is learnt at high noise: t >= min_timestep)
    check_images: int = 4
    tolerance: float = 4.0  # half an 8x8 latent pixel: the picture is the pooled disk, upsampled
    min_timestep: int = 500  # the teacher's training noise levels: t >= min_timestep
    # The student is distilled where the check's one-step sampler asks for its prediction (t = 999) and
    # where this teacher's control decides the picture (docs/controllability.md: with 4 sampler steps the
    # teacher's control is +0.04, within noise of none): t >= student_min_timestep.
    student_min_timestep: int = 900
    student_seed: int = 0  # added to seed for the distillation run alone (its draws of noise, timesteps, batches)
    seeded_teacher: bool = True  # start the teacher from a seeded ControlNet whose zero convolutions act (not zero)
    validate_every: int = 0  # 0: start and end only
    seed: int = 0
    # The task and the base, chosen so that control can be told from chance (docs/controllability.md):
    disk_centre: tuple[float, float] = (0.2, 0.8)  # disks anywhere, not all near the middle ...
    disk_radius: tuple[float, float] = (0.12, 0.2)  # ... and small, so one guide's outline misses another's
    local_attention: bool = True  # the base's self-attention reads mostly the pixel itself (to_k = to_q)
    output_scale: float = 0.3  # the base's output convolution scaled: less of its random texture
    smooth_decode: bool = True  # bilinear upsampling of the pooled latents: edges Canny can place
    canny: tuple[float, float] = (50.0, 100.0)  # the check's Canny thresholds (OpenCV's 0-255 scale)
    # fresh guides the finished teacher, student and untrained LLLite are scored on; with 64, one
    # student scored 89 % of its teacher's control, with 256 103 % (docs/controllability.md)
    scored_guides: int = 256


@dataclass
class Evidence:
    teacher_path: Path
    student_path: Path
    teacher: list = field(default_factory=list)  # (step, {control_gap ..., controllability ...}) of the teacher's run
    student: list = field(default_factory=list)  # (step, {student_mse, bare_mse, controllability ...}) of the distillation
    teacher_controllability: float = 0.0  # the trained ControlNet's, with the check of the distillation
    # name ("teacher", "teacher without input block 0", "distilled", "untrained") -> (edge F1, chance
    # level) on scored_guides fresh guides
    scores: dict = field(default_factory=dict)

    def above_chance(self, name: str) -> float:
        """The control in a score: its F1 minus the same pictures' F1 against the other guides."""
        f1, chance = self.scores[name]
        return f1 - chance

    @property
    def untrained(self) -> float:
        return self.student[0][1]["controllability"]

    @property
    def distilled(self) -> float:
        return self.student[-1][1]["controllability"]


def fill_pairs(n: int, s: Settings, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """n Fill50K-like (image, guide) pairs without the black disks (a black outline on black is no guide)."""
    images, guides = fill_task(3 * n, seed=seed, centre=s.disk_centre, radius=s.disk_radius)
    keep = [i for i in range(3 * n) if guides[i].amax() > 0][:n]
    return images[keep], guides[keep]


def pooled_decoder(latent_format, smooth: bool = False):
    """Sampled latents -> pictures in 0..1: pooled_latents undone up to the pooling."""
    mode = {"mode": "bilinear", "align_corners": False} if smooth else {"mode": "nearest"}
    return lambda z: F.interpolate(latent_format.process_in(z)[:, :3], scale_factor=8, **mode) * 0.5 + 0.5


def base_model(s: Settings):
    """The tiny SD1.5 base the teacher is trained on and the student distilled on. A random
    U-Net's self-attention is uniform (each latent pixel weighs itself 1/64 on the 8 x 8 grid,
    docs/controllability.md), where a trained one's is not; an LLLite acts only through
    attention inputs, so with uniform attention nothing it adds stays where its guide is.
    local_attention sets to_k = to_q in every self-attention, so each pixel reads mostly itself."""
    model = build_model("sd15", seed=s.seed)
    unet = model.model.diffusion_model
    with torch.no_grad():
        if s.local_attention:
            for name, m in unet.named_modules():
                if name.endswith("attn1"):
                    m.to_k.weight.copy_(m.to_q.weight)
        unet.out[2].weight.mul_(s.output_scale)
        unet.out[2].bias.mul_(s.output_scale)
    return model


def _data(s: Settings, training: int, holdout: int, seed: int) -> TrainingData:
    images, guides = fill_pairs(training + holdout, s, seed)
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, CAPTION, guides))],
                            resolution=(64, 64), batch_size=2)
    return TrainingData([dataset], encode_latents=pooled_latents, vae_id="avg-pool-8", seed=s.seed, size_multiple=64,
                        require_guides=True, holdout=holdout)


def _run(model, clip, data, s: Settings, out: Path, name: str, make_adapter, evaluators, progress=None, **options):
    """options: the run's TrainConfig options (steps, learning rate, timesteps, seed)."""
    cfg = TrainConfig(v_parameterization=True, validate_every_n_steps=s.validate_every, save_precision="float",
                      output_name=name, save_state=False, **options)
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
                                         pooled_decoder(model.model.latent_format, s.smooth_decode), seed=s.seed)
            hooks.evaluate = combined(*(e(tm, text, adapter, holdout) for e in evaluators), check)
            return engine.run()


def _check_options(s: Settings) -> CheckOptions:
    # the guides are coloured outlines: any colour counts as an edge
    return CheckOptions("canny", s.check_images, s.sample_steps, MapSettings(*s.canny), tolerance=s.tolerance,
                        edge_threshold=0.05)


def run_evidence(tiny, out: Path, s: Settings = Settings(), progress=None) -> Evidence:
    """Trains the teacher, distils it, and measures the three controllabilities."""
    model, clip = base_model(s), tiny.build_clip("sd15", seed=s.seed)
    data = _data(s, s.images, s.holdout, s.seed)
    unet_config = model.model.model_config.unet_config
    gap = lambda tm, text, adapter, holdout: ControlGap(tm, text, adapter, holdout, (s.min_timestep, 1000))  # noqa: E731
    start = str(write_controlnet(out / "teacher_start.safetensors", model, seed=s.seed + 1)) if s.seeded_teacher else None
    teacher_run = _run(model, clip, data, s, out, "teacher",
                       lambda tm: ControlNetAdapter(unet_config, "sd15", control_weights=start), [gap], progress,
                       max_train_steps=s.teacher_steps, learning_rate=s.teacher_lr, min_timestep=s.min_timestep, seed=s.seed)
    control = comfy.controlnet.load_controlnet(str(teacher_run.final_path))
    teacher = ControlNetTeacher(control, name="teacher.safetensors")
    agreement = lambda tm, text, adapter, holdout: TeacherAgreement(tm, text, adapter, holdout, (s.min_timestep, 1000))  # noqa: E731
    student_run = _run(model, clip, data, s, out, "student",
                       lambda tm: DistillationAdapter(tm, teacher, "sd15", cond_emb_dim=s.cond_emb_dim, network_dim=s.network_dim,
                                                      name="student", output_blocks=s.output_blocks), [agreement], progress,
                       max_train_steps=s.student_steps, learning_rate=s.student_lr, min_timestep=s.student_min_timestep,
                       seed=s.seed + s.student_seed)
    evidence = Evidence(teacher_run.final_path, student_run.final_path, teacher_run.evaluations, student_run.evaluations)
    evidence.teacher_controllability = teacher_run.evaluations[-1][1]["controllability"]
    evidence.scores = score_on_fresh_guides(model, clip, s, teacher_run.final_path, student_run.final_path)
    return evidence


def _without_first_skip(teacher_path: Path) -> Path:
    """The teacher with its residual on input block 0's skip (the full-resolution output of
    conv_in, where kohya's LLLite layout has no module) switched off: what of its control an
    LLLite could copy directly."""
    sd = load_file(str(teacher_path))
    sd = {k: v.zero_() if k.startswith("control_model.zero_convs.0.") else v for k, v in sd.items()}
    path = teacher_path.with_name("teacher_without_input_block_0.safetensors")
    save_file(sd, str(path))
    return path


def score_on_fresh_guides(model, clip, s: Settings, teacher_path: Path, student_path: Path) -> dict:
    """Edge F1 and chance level of the teacher, the distilled and an untrained LLLite on
    s.scored_guides guides none of them trained on (a new seed), one sample each: the held-out
    guides of a run are too few to tell control from chance (a guide-blind picture's F1 against
    its own guides differs from its chance level by up to 0.1 on 16 of them)."""
    data = _data(s, 1, s.scored_guides, seed=s.seed + 1000)
    options = _check_options(s)
    options.images = s.scored_guides
    unet_config = model.model.model_config.unet_config
    no_block0 = _without_first_skip(teacher_path)
    adapters = {"teacher": lambda: ControlNetAdapter(unet_config, "sd15", control_weights=str(teacher_path)),
                "teacher without input block 0": lambda: ControlNetAdapter(unet_config, "sd15", control_weights=str(no_block0)),
                "distilled": lambda: LLLiteAdapter("sd15", s.cond_emb_dim, s.network_dim, network_weights=str(student_path),
                                                   output_blocks=s.output_blocks),
                "untrained": lambda: LLLiteAdapter("sd15", s.cond_emb_dim, s.network_dim, output_blocks=s.output_blocks)}
    scores = {}
    with torch.inference_mode(False):
        text = TextConditioner(clip, "sd15")
        text.precompute(data.fixed_captions())
        with trainable_model(model, v_parameterization=True) as tm:
            for name, make in adapters.items():
                torch.manual_seed(s.seed)  # the untrained LLLite's random down/mid weights
                adapter = make()
                adapter.attach(tm.diffusion_model, {})
                adapter.train(False)
                try:
                    check = ControllabilityCheck(tm, text, adapter, data.holdout_batches(), options,
                                                 pooled_decoder(model.model.latent_format, s.smooth_decode), seed=s.seed)
                    with torch.no_grad():
                        r = check(0)
                finally:
                    adapter.detach()
                scores[name] = (r["controllability"], r["controllability_chance"])
    return scores
