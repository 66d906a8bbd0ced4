"""Evidence that a control is being learned: on held-out images, the loss with each image's own
guide vs with another image's guide. An adapter that ignores its guide scores the same on both
(gap 0: what kohya users with "broken" LLLite trainings could not see); one that uses it is
clearly better with the right guide (gap > 0).

Fixed for the whole run, so evaluations at different steps are comparable: the held-out
batches, the shuffle (each guide moved one place along the held-out images of its size:
within a batch, and across batches when they hold one image; an image alone in its bucket
gets another size's guide, fitted), the noise (seeded per batch)
and the timesteps (K evenly spaced, every image at each). Loss is the plain MSE of the
model's prediction target, the same for every adapter and loss setting.
"""
import dataclasses
import math
from collections import defaultdict

import torch

from ..lllite.guide import fit_guide
from .comfy_bridge import TextConditioner, TrainingModel
from .controllability.check import headline
from .data.batch import Batch
from .loss_curve import draw_loss_curve

EVAL_TIMESTEPS = 4


def shuffled_guides(batches: list[Batch]) -> tuple[list[Batch], list[Batch]]:
    """(correct, shuffled): the held-out batches, and the same batches with every guide replaced
    by another held-out image's. Each guide moves one place along the images of its size
    (inside a batch, and across batches when they hold one image); an image alone in its size
    (bucketing) gets the guide of an image of another size, fitted to its size as the apply
    node fits guides. Raises with fewer than 2 held-out images."""
    positions = []  # (batch index, row), grouped by guide size
    by_size = defaultdict(list)
    for b, batch in enumerate(batches):
        if batch.guides is None:
            raise ValueError("held-out batches have no guide images")
        for row in range(batch.guides.shape[0]):
            by_size[tuple(batch.guides.shape[-2:])].append((b, row))
    if sum(len(rows) for rows in by_size.values()) < 2:
        raise ValueError("the control gap needs at least 2 held-out images; hold out more images")
    donor = {}
    alone = [rows[0] for rows in by_size.values() if len(rows) == 1]
    for rows in by_size.values():
        if len(rows) > 1:
            donor.update({pos: rows[(i + 1) % len(rows)] for i, pos in enumerate(rows)})
            positions += rows
    # images alone in their size take turns among themselves, or borrow from the others
    ring = alone if len(alone) > 1 else alone + positions[:1]
    donor.update({pos: ring[(i + 1) % len(ring)] for i, pos in enumerate(alone)})

    def guide_for(b: int, row: int) -> torch.Tensor:
        db, dr = donor[(b, row)]
        g = batches[db].guides[dr]
        height, width = batches[b].guides.shape[-2:]
        return g if g.shape[-2:] == (height, width) else fit_guide((g[None] + 1) / 2, height, width, "crop")[0] * 2 - 1

    shuffled = [dataclasses.replace(batch, guides=torch.stack([guide_for(b, r) for r in range(batch.guides.shape[0])]))
                for b, batch in enumerate(batches)]
    return list(batches), shuffled


class ControlGap:
    """Callable evaluation for the engine's hooks: step -> {"heldout_correct", "heldout_shuffled",
    "control_gap"} (gap = shuffled - correct; > 0 when the guide helps)."""

    def __init__(self, model: TrainingModel, text: TextConditioner, adapter, holdout: list[Batch],
                 timestep_range: tuple[int, int] | None = None, timesteps: int = EVAL_TIMESTEPS, seed: int = 0):
        """timestep_range: [min, max) of the timesteps the run trains (TrainConfig.min_timestep,
        max_timestep); the whole schedule when None."""
        self.model, self.text, self.adapter = model, text, adapter
        self.correct, self.shuffled = shuffled_guides(holdout)
        lo, hi = timestep_range or (0, model.schedule.num_timesteps)
        self.timesteps = torch.tensor([lo + int((k + 0.5) * (hi - lo) / timesteps) for k in range(timesteps)])
        self.noise = [torch.randn((timesteps, *b.latents.shape), generator=torch.Generator().manual_seed(seed * 1000 + i))
                      for i, b in enumerate(self.correct)]

    @torch.no_grad()
    def _loss(self, batches: list[Batch]) -> float:
        """Mean squared error over the batches, every image at every evaluation timestep (one
        U-Net call per batch: the timesteps ride along in the batch dimension)."""
        model, dev = self.model, self.model.device
        k = len(self.timesteps)
        total, count = 0.0, 0
        for batch, noise in zip(batches, self.noise):
            b = batch.latents.shape[0]
            repeat = lambda seq: list(seq) * k  # noqa: E731
            latents = batch.latents.to(dev, torch.float32).repeat(k, 1, 1, 1)
            context, pooled = self.text.encode(repeat(batch.captions), dev)
            y = model.adm(pooled, repeat(batch.original_sizes), repeat(batch.crop_top_left), repeat(batch.target_sizes))
            self.adapter.set_batch(dataclasses.replace(batch, latents=latents, guides=batch.guides.repeat(k, 1, 1, 1)))
            ts = self.timesteps.repeat_interleave(b).to(dev)
            n = noise.reshape(latents.shape).to(dev)
            pred = model.predict(model.schedule.noisy_input(latents, n, ts), ts, context, y)
            total += torch.nn.functional.mse_loss(pred, model.schedule.target(latents, n, ts), reduction="sum").item()
            count += pred.numel()
        return total / count

    def __call__(self, step: int) -> dict[str, float]:
        correct, shuffled = self._loss(self.correct), self._loss(self.shuffled)
        result = {"heldout_correct": correct, "heldout_shuffled": shuffled, "control_gap": shuffled - correct}
        return result


def gap_text(result: dict[str, float] | None) -> str:
    """'control gap +0.0123 (held-out 0.412 right guide / 0.424 shuffled)' for progress text."""
    if not result:
        return "control gap: not measured yet"
    return (f"control gap {result['control_gap']:+.4g} (held-out loss {result['heldout_correct']:.4g} with the right "
            f"guide, {result['heldout_shuffled']:.4g} shuffled)") + controllability_text(result)


def controllability_text(result: dict[str, float]) -> str:
    """', controllability f1 0.412 (held-out samples)' when the run measures it, else ''."""
    measured = headline(result)
    if measured is None:
        return ""
    chance = f"; chance {result['controllability_chance']:.4g}" if "controllability_chance" in result else ""
    return f", controllability {measured[0]} {measured[1]:.4g} (held-out samples{chance})"


def draw_training_curves(losses: list[float], evaluations: list[tuple[int, dict[str, float]]],
                         width: int = 640) -> torch.Tensor:
    """The loss curve with the control-gap panel below it, and the controllability panel when the
    run measured it (same step axis): IMAGE (1, H, W, 3)."""
    steps = max(len(losses), max((s for s, _ in evaluations), default=0), 1)
    top = draw_loss_curve({"training loss": list(enumerate(losses, 1))}, width, 300, x_range=(0, steps))
    if not evaluations:
        return top
    gap = [(s, r["control_gap"]) for s, r in evaluations if math.isfinite(r["control_gap"])]
    bottom = draw_loss_curve({"control gap (held-out loss shuffled - right guide)": gap}, width, 200,
                             x_range=(0, steps), zero_line=True)
    return torch.cat([top, bottom, *controllability_panel(evaluations, width, steps)], dim=1)


def controllability_panel(evaluations: list[tuple[int, dict[str, float]]], width: int, steps: int) -> list[torch.Tensor]:
    """[the controllability of held-out samples per evaluation step], or [] when not measured."""
    measured = [(s, headline(r)) for s, r in evaluations if headline(r) is not None]
    if not measured:
        return []
    name = measured[-1][1][0]
    series = {f"controllability of held-out samples ({name})": [(s, v) for s, (_, v) in measured]}
    chance = [(s, r["controllability_chance"]) for s, r in evaluations if "controllability_chance" in r]
    if chance:
        series["chance (against the other held-out guides)"] = chance
    return [draw_loss_curve(series, width, 200, x_range=(0, steps))]
