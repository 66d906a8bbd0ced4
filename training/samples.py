"""Sample images during training: the model as it trains (adapter attached, in eval mode),
sampled with ComfyUI's own samplers from sd-scripts-style prompt lines, decoded by the VAE."""
import comfy.sample
import comfy.samplers
import torch

from .comfy_bridge import TextConditioner, TrainingModel, reload_training_model
from .prompts import SamplePrompt

# sd-scripts' --sample_sampler names -> the same method in ComfyUI (sampler, scheduler). sd-scripts
# builds diffusers schedulers with their default, non-Karras timesteps: ComfyUI's "normal".
SD_SCRIPTS_SAMPLERS = {
    "ddim": ("ddim", "ddim_uniform"),
    "lms": ("lms", "normal"), "k_lms": ("lms", "normal"),
    "euler": ("euler", "normal"), "k_euler": ("euler", "normal"),
    "euler_a": ("euler_ancestral", "normal"), "k_euler_a": ("euler_ancestral", "normal"),
    "heun": ("heun", "normal"),
    "dpmsolver++": ("dpmpp_2m", "normal"),  # diffusers' DPMSolverMultistep: 2nd-order DPM-Solver++
    "dpm_2": ("dpm_2", "normal"), "k_dpm_2": ("dpm_2", "normal"),
    "dpm_2_a": ("dpm_2_ancestral", "normal"), "k_dpm_2_a": ("dpm_2_ancestral", "normal"),
}


# sd-scripts samplers ComfyUI has no equal of: refused rather than replaced by another method
NOT_IN_COMFYUI = {
    "pndm": "ComfyUI has no PNDM; ipndm is its improved variant (lower-order start instead of PNDM's Runge-Kutta warm-up)",
    "dpmsolver": "ComfyUI has DPM-Solver++ (dpmsolver++ / dpmpp_2m), not the noise-prediction DPM-Solver multistep",
    "dpmsingle": "ComfyUI has no singlestep DPM-Solver++ (dpm_fast is k-diffusion's singlestep DPM-Solver, a different method)",
}


def resolve_sampler(name: str) -> tuple[str, str]:
    """An sd-scripts sampler name, or any ComfyUI sampler name (then with the normal scheduler)."""
    if name in SD_SCRIPTS_SAMPLERS:
        return SD_SCRIPTS_SAMPLERS[name]
    if name in comfy.samplers.KSampler.SAMPLERS:
        return name, "normal"
    names = f"sd-scripts names {', '.join(SD_SCRIPTS_SAMPLERS)}; or ComfyUI's {', '.join(comfy.samplers.KSampler.SAMPLERS)}"
    if name in NOT_IN_COMFYUI:
        raise ValueError(f"sampler {name!r}: {NOT_IN_COMFYUI[name]}. Available: {names}")
    raise ValueError(f"unknown sampler {name!r}: use {names}")


class SampleRenderer:
    def __init__(self, model: TrainingModel, vae, prompts: list[SamplePrompt], sampler: str = "euler_a", seed: int = 0):
        self.model = model
        self.vae = vae
        self.prompts = prompts
        # (sampler, scheduler) per prompt: its --ss, else the run's sampler; checked before training starts
        self.choices = []
        for p in prompts:
            try:
                self.choices.append(resolve_sampler(p.sampler or sampler))
            except ValueError as e:
                raise ValueError(f"sample prompt {p.prompt!r}: {e}" if p.sampler else f"sample_sampler: {e}") from None
        self.seed = seed

    def texts(self) -> list[str]:
        """Every text to encode, so frozen encoders can be released before training starts."""
        return [t for p in self.prompts for t in (p.prompt, p.negative)]

    def _cond(self, text: TextConditioner, caption: str):
        context, pooled = text.encode([caption], self.model.device, prompts=True)
        return [[context, {} if pooled is None else {"pooled_output": pooled}]]

    def render(self, step: int, text: TextConditioner) -> list[torch.Tensor]:
        """One IMAGE (1, H, W, 3) per prompt, in prompt order."""
        images = []
        try:
            for i, (p, (sampler_name, scheduler)) in enumerate(zip(self.prompts, self.choices)):
                seed = p.seed if p.seed is not None else self.seed + i
                # the model's own channels and dimensions (Anima: (1, 16, 1, h, w)), as KSampler does
                latent = comfy.sample.fix_empty_latent_channels(self.model.patcher, torch.zeros(1, 4, p.height // 8, p.width // 8))
                noise = comfy.sample.prepare_noise(latent, seed)
                out = comfy.sample.sample(
                    self.model.patcher, noise, p.steps, p.cfg, sampler_name, scheduler,
                    self._cond(text, p.prompt), self._cond(text, p.negative), latent, disable_pbar=True, seed=seed)
                decoded = self.vae.decode(out)
                images.append(decoded.reshape(-1, *decoded.shape[-3:]).clamp(0, 1).float().cpu())  # video VAEs: (1, T, H, W, 3)
        finally:
            reload_training_model(self.model)
        return images


class GuidedSamples:
    """Samples of a guided adapter (LLLite, ControlNet): every render runs with the sample guide
    image set on the adapter (adapter.using_guide), the training batches' guides afterwards."""

    def __init__(self, renderer: SampleRenderer, adapter, guide: torch.Tensor):
        if not hasattr(adapter, "using_guide"):
            raise TypeError(f"{type(adapter).__name__} takes no guide image for its samples")
        self.renderer, self.adapter, self.guide = renderer, adapter, guide
        self.prompts = renderer.prompts

    def texts(self) -> list[str]:
        return self.renderer.texts()

    def render(self, step: int, text: TextConditioner) -> list[torch.Tensor]:
        with self.adapter.using_guide(self.guide):
            return self.renderer.render(step, text)
