"""Evidence that the student learns the teacher: on held-out guides, at fixed noise and
timesteps, the mean squared distance to the ControlNet-guided prediction of the LLLite-patched
model (student) and of the bare model (what the student starts near). student < bare: the
LLLite reproduces part of what the ControlNet does; 0 would be all of it."""
import dataclasses

import torch

from ..comfy_bridge import TextConditioner, TrainingModel
from ..data.batch import Batch
from .adapter import DistillationAdapter

EVAL_TIMESTEPS = 4


class TeacherAgreement:
    """Callable evaluation for the engine's hooks: step -> {"student_mse", "bare_mse"}."""

    def __init__(self, model: TrainingModel, text: TextConditioner, adapter: DistillationAdapter, holdout: list[Batch],
                 timestep_range: tuple[int, int] | None = None, timesteps: int = EVAL_TIMESTEPS, seed: int = 0):
        if not holdout:
            raise ValueError("measuring the student against the teacher needs held-out images")
        self.model, self.text, self.adapter, self.batches = model, text, adapter, holdout
        lo, hi = timestep_range or (0, model.schedule.num_timesteps)
        self.timesteps = torch.tensor([lo + int((k + 0.5) * (hi - lo) / timesteps) for k in range(timesteps)])
        self.noise = [torch.randn((timesteps, *b.latents.shape), generator=torch.Generator().manual_seed(seed * 1000 + i))
                      for i, b in enumerate(holdout)]
        self._teacher: list[torch.Tensor] | None = None  # the teacher never changes: computed once

    def _inputs(self, i: int):
        """Every held-out image at every evaluation timestep, in one batch."""
        model, dev, batch, k = self.model, self.model.device, self.batches[i], len(self.timesteps)
        latents = batch.latents.to(dev, torch.float32).repeat(k, 1, 1, 1)
        context, pooled = self.text.encode(list(batch.captions) * k, dev)
        y = model.adm(pooled, list(batch.original_sizes) * k, list(batch.crop_top_left) * k, list(batch.target_sizes) * k)
        ts = self.timesteps.repeat_interleave(batch.latents.shape[0]).to(dev)
        x_in = model.schedule.noisy_input(latents, self.noise[i].reshape(latents.shape).to(dev), ts)
        self.adapter.set_batch(dataclasses.replace(batch, latents=latents, guides=batch.guides.repeat(k, 1, 1, 1)))
        return x_in, ts, context, y

    @torch.no_grad()
    def __call__(self, step: int) -> dict[str, float]:
        first = self._teacher is None
        teachers = self._teacher or []
        student = bare = count = 0.0
        for i in range(len(self.batches)):
            x_in, ts, context, y = self._inputs(i)
            if first:
                teachers.append(self.adapter.teacher_prediction(x_in, ts, context, y).cpu())
            target = teachers[i].to(x_in.device)
            student += torch.sum((self.model.predict(x_in, ts, context, y) - target) ** 2).item()
            with self.adapter.bypassed():
                bare += torch.sum((self.model.predict(x_in, ts, context, y) - target) ** 2).item()
            count += target.numel()
        self._teacher = teachers
        return {"student_mse": student / count, "bare_mse": bare / count}


def agreement_text(result: dict[str, float] | None) -> str:
    if not result:
        return "distance to the teacher: not measured yet"
    from ..control_gap import controllability_text

    return (f"distance to the teacher (held-out MSE): LLLite {result['student_mse']:.4g}, "
            f"bare model {result['bare_mse']:.4g}") + controllability_text(result)


def draw_distill_curves(losses: list[float], evaluations: list[tuple[int, dict[str, float]]],
                        width: int = 640) -> torch.Tensor:
    """The distillation loss with the held-out distances to the teacher below it (same step
    axis): IMAGE (1, H, W, 3)."""
    from ..control_gap import controllability_panel
    from ..loss_curve import draw_loss_curve

    steps = max(len(losses), max((s for s, _ in evaluations), default=0), 1)
    top = draw_loss_curve({"distillation loss": list(enumerate(losses, 1))}, width, 300, x_range=(0, steps))
    if not evaluations:
        return top
    bottom = draw_loss_curve({"held-out MSE to the teacher: LLLite": [(s, r["student_mse"]) for s, r in evaluations],
                              "bare model": [(s, r["bare_mse"]) for s, r in evaluations]},
                             width, 200, x_range=(0, steps), zero_line=True)
    return torch.cat([top, bottom, *controllability_panel(evaluations, width, steps)], dim=1)
