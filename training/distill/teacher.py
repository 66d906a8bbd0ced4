"""The teacher: the frozen model guided by a ControlNet that core ComfyUI loaded (any file
ControlNetLoader reads), called the way core's sampler calls it (ControlBase.get_control with
the noisy latent at its sigma, residuals passed to the U-Net), with its strength and its
start/end range."""
import torch

from ..comfy_bridge import TrainingModel


class ControlNetTeacher:
    def __init__(self, control, strength: float = 1.0, start_percent: float = 0.0, end_percent: float = 1.0,
                 name: str = "ControlNet"):
        """control: a core ControlBase (comfy.controlnet.ControlNet, T2I adapter, control LoRA ...);
        name: its file's name, for the student's metadata."""
        if not 0.0 <= start_percent <= end_percent <= 1.0:
            raise ValueError(f"the teacher's range needs 0 <= start_percent <= end_percent <= 1, got {start_percent}..{end_percent}")
        self.control, self.strength, self.name = control, strength, name
        self.percent = (start_percent, end_percent)

    def _control(self, model: TrainingModel, hint: torch.Tensor):
        """A copy of the control with this call's guide images (a new hint per call: core caches
        the resized hint by size only)."""
        c = self.control.copy().set_cond_hint(hint, self.strength, self.percent)
        base = model.patcher.model
        c.pre_run(base, lambda p: base.model_sampling.percent_to_sigma(p))
        return c

    def load(self) -> None:
        """The control model onto the training device, through ComfyUI's model management."""
        import comfy.model_management

        comfy.model_management.load_models_gpu(self.control.get_models())

    @torch.no_grad()
    def predict(self, model: TrainingModel, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                y: torch.Tensor | None, guides: torch.Tensor) -> torch.Tensor:
        """The guided model's raw output for the scaled input x_in at integer timesteps; guides
        (B, 3, H, W) in [-1, 1]. Core decides whether the control acts by the batch's first
        sigma, so with a partial range each sample is called alone."""
        if self.percent != (0.0, 1.0) and x_in.shape[0] > 1:
            return torch.cat([self.predict(model, x_in[i:i + 1], timesteps[i:i + 1], context[i:i + 1],
                                           None if y is None else y[i:i + 1], guides[i:i + 1]) for i in range(x_in.shape[0])])
        sigma = model.schedule.sigmas.to(x_in.device)[timesteps].float()
        x_noisy = x_in * (sigma**2 + 1).sqrt().view(-1, 1, 1, 1)  # undo calculate_input: core's control expects it
        cond = {"c_crossattn": context} if y is None else {"c_crossattn": context, "y": y}
        c = self._control(model, ((guides.float() + 1) / 2).clamp(0, 1).to(x_in.device))
        with model.autocast():
            residuals = c.get_control(x_noisy, sigma, cond, 1, {})
        return model.predict(x_in, timesteps, context, y, control=residuals)
