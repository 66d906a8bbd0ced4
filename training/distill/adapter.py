"""The student: training/lllite_adapter.py's LLLite adapter, whose target is the teacher's
prediction instead of the noise (the engine asks an adapter with teacher_prediction for it).
While the teacher or the bare model runs, the LLLite hooks stand aside."""
from contextlib import contextmanager

import torch

from ..comfy_bridge import TrainingModel
from ..lllite_adapter import LLLiteAdapter
from .teacher import ControlNetTeacher


class DistillationAdapter(LLLiteAdapter):
    kind = "lllite-distill"

    def __init__(self, model: TrainingModel, teacher: ControlNetTeacher, family: str, **lllite_options):
        super().__init__(family, **lllite_options)
        self.model, self.teacher = model, teacher
        self._bypassed = False

    def attach(self, diffusion_model, text_encoders) -> None:
        super().attach(diffusion_model, text_encoders)
        self.teacher.load()

    @contextmanager
    def bypassed(self):
        """Within the block the U-Net runs without the LLLite (the teacher, the bare model)."""
        before, self._bypassed = self._bypassed, True
        try:
            yield
        finally:
            self._bypassed = before

    def _begin_call(self, module, args):
        if not self._bypassed:
            super()._begin_call(module, args)

    def _block_hook(self, keys):
        hook = super()._block_hook(keys)
        return lambda module, args: None if self._bypassed else hook(module, args)

    def _linear_hook(self, key):
        hook = super()._linear_hook(key)
        return lambda layer, args: None if self._bypassed else hook(layer, args)

    def teacher_prediction(self, x_in: torch.Tensor, timesteps: torch.Tensor, context: torch.Tensor,
                           y: torch.Tensor | None) -> torch.Tensor:
        """The engine's target: the ControlNet-guided prediction for this batch's guides."""
        with self.bypassed():
            return self.teacher.predict(self.model, x_in, timesteps, context, y, self._guides)

    def metadata(self) -> dict[str, str]:
        t = self.teacher
        return {**super().metadata(), "lllite_kit_distilled_from": t.name, "lllite_kit_teacher_strength": str(t.strength),
                "lllite_kit_teacher_range": f"{t.percent[0]}-{t.percent[1]}"}
