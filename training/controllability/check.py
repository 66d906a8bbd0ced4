"""Controllability during training: at each held-out evaluation, a few held-out guides are
sampled with the model as it trains (adapter attached, few steps, fixed seeds, CFG off: the
caption alone), decoded, and scored with measure.py as the Measure Controllability node scores
finished pictures. The evaluations of one run use the same guides, captions, noise and
sampler, so their scores are comparable; a control being learned raises the score.
"""
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data.batch import Batch
from .maps import KINDS, MapSettings, result_maps
from .measure import CHANCE_GUIDES, PRIMARY, measure

OFF = "off"
SAMPLER, SCHEDULER = "euler", "normal"  # deterministic: the same seed gives the same picture


@dataclass
class CheckOptions:
    """What the run's controllability check does (TrainConfig's controllability_* options)."""

    kind: str = OFF  # a maps.KINDS name, or "off"
    images: int = 2  # held-out guides sampled per evaluation
    sample_steps: int = 8
    settings: MapSettings | None = None  # the guides' preprocessor settings
    tolerance: float = 2.0  # edges: pixel tolerance of the F1
    edge_threshold: float = 0.5

    @property
    def on(self) -> bool:
        return self.kind != OFF

    def check(self, holdout: int) -> None:
        """Refuses, before any work starts, what cannot be measured."""
        if not self.on:
            return
        if self.kind not in KINDS:
            raise ValueError(f"controllability_map must be off or one of {', '.join(KINDS)}; got {self.kind!r}")
        if KINDS[self.kind].needs_weights and not (self.settings and self.settings.weights_path):
            raise ValueError(f"controllability_map '{self.kind}' runs a detector: set controllability_weights to its weight "
                             "file (the one that made the guides)")
        if self.images < 1 or self.sample_steps < 1:
            raise ValueError("controllability_images and controllability_sample_steps must be >= 1")
        if holdout < 1:
            raise ValueError("the controllability check samples held-out guides: hold out images (heldout_images >= 1)")


def heldout_samples(batches: list[Batch], count: int) -> list[tuple[Batch, int]]:
    """The first `count` held-out images as (batch, row), in the batches' fixed order."""
    rows = [(b, r) for b in batches for r in range(b.latents.shape[0])]
    return rows[:count]


class ControllabilityCheck:
    """Callable evaluation for the engine's hooks: step -> {"controllability": headline mean,
    "controllability_<metric>": mean of each metric of the map's family, headline first;
    "controllability_chance": the headline of each picture against up to CHANCE_GUIDES other held-out guides,
    with two or more}."""

    def __init__(self, model, text, adapter, holdout: list[Batch], options: CheckOptions,
                 decode: Callable[[torch.Tensor], torch.Tensor], seed: int = 0, after_sampling: Callable[[], None] | None = None):
        """model: the TrainingModel (its patcher is sampled); adapter: a guided adapter
        (using_guide); decode: latents as the sampler returns them -> pictures (B, 3, H, W) in
        0..1; after_sampling: puts the training model back (comfy_bridge.reload_training_model)."""
        self.model, self.text, self.adapter, self.options = model, text, adapter, options
        self.decode, self.seed, self.after_sampling = decode, seed, after_sampling
        self.samples = heldout_samples(holdout, options.images)
        if not self.samples:
            raise ValueError("the controllability check needs held-out images")
        self.family = KINDS[options.kind].family
        self.primary = PRIMARY[self.family][0]

    def _cond(self, caption: str):
        context, pooled = self.text.encode([caption], self.model.device)
        return [[context, {} if pooled is None else {"pooled_output": pooled}]]

    def pictures(self) -> list[torch.Tensor]:
        """One (1, 3, H, W) picture in 0..1 per held-out guide, sampled with it."""
        import comfy.sample

        out = []
        try:
            for i, (batch, row) in enumerate(self.samples):
                latent = torch.zeros_like(batch.latents[row:row + 1], dtype=torch.float32, device="cpu")
                seed = self.seed + i
                noise = comfy.sample.prepare_noise(latent, seed)
                cond = self._cond(batch.captions[row])
                with self.adapter.using_guide(batch.guides[row:row + 1]):
                    z = comfy.sample.sample(self.model.patcher, noise, self.options.sample_steps, 1.0, SAMPLER, SCHEDULER,
                                            cond, cond, latent, disable_pbar=True, seed=seed)
                out.append(self.decode(z).float().cpu().clamp(0, 1))
        finally:
            if self.after_sampling is not None:
                self.after_sampling()
        return out

    def __call__(self, step: int) -> dict[str, float]:
        o = self.options
        pairs = [(result_maps(o.kind, picture, o.settings or MapSettings()).cpu(), (batch.guides[row:row + 1].float().cpu() + 1) / 2)
                 for (batch, row), picture in zip(self.samples, self.pictures())]

        def score(maps, guide):
            return measure(self.family, maps, guide, o.tolerance, o.edge_threshold).mean

        scores = [score(maps, guide) for maps, guide in pairs]
        means = {k: sum(s[k] for s in scores) / len(scores) for k in scores[0]}
        result = {"controllability": means[self.primary], **{f"controllability_{k}": v for k, v in means.items()}}
        if len(pairs) > 1:  # the chance level, as the node measures it: each picture against up to
            # CHANCE_GUIDES other held-out guides (guides rolled by 1, 2, ...; resized to theirs)
            n = len(pairs)
            others = [score(pairs[i][0], pairs[(i - k) % n][1])[self.primary]
                      for k in range(1, min(n, CHANCE_GUIDES + 1)) for i in range(n)]
            result["controllability_chance"] = sum(others) / len(others)
        return result


def headline(result: dict[str, float]) -> tuple[str, float] | None:
    """(metric name, value) of an evaluation's controllability, None when it was not measured."""
    if "controllability" not in result:
        return None
    name = next(k for k in result if k.startswith("controllability_"))[len("controllability_"):]
    return name, result["controllability"]


def combined(*hooks: Callable[[int], dict[str, float]]) -> Callable[[int], dict[str, float]]:
    """One evaluate hook from several (the control gap and the controllability check)."""
    def evaluate(step: int) -> dict[str, float]:
        result = {}
        for hook in hooks:
            result.update(hook(step))
        return result
    return evaluate


def check_options(cfg) -> CheckOptions:
    """The controllability_* options of a TrainConfig; the detector runs with the guides'
    preprocessor defaults (Canny 100/200, each detector's resolution)."""
    return CheckOptions(cfg.controllability_map or OFF, cfg.controllability_images, cfg.controllability_sample_steps,
                        MapSettings(weights_path=cfg.controllability_weights), cfg.controllability_tolerance)


def controllability_check(model, text, adapter, holdout: list[Batch], options: CheckOptions, vae,
                          seed: int = 0) -> ControllabilityCheck:
    """The check of a run from ComfyUI objects: pictures decoded by the run's VAE."""
    from ..comfy_bridge import reload_training_model

    def decode(latents: torch.Tensor) -> torch.Tensor:
        pictures = vae.decode(latents)
        return pictures.reshape(-1, *pictures.shape[-3:]).movedim(-1, 1)  # video VAEs: (1, T, H, W, 3)

    return ControllabilityCheck(model, text, adapter, holdout, options, decode, seed,
                                after_sampling=lambda: reload_training_model(model))
