"""Guided trainers (LLLite, ControlNet, distillation) refuse sample prompts without a sample
guide image before any data or model work starts (training/session.check_sample_guide)."""
import pytest

from lllite_kit.training.config import TrainConfig
from lllite_kit.training.controlnet.network import ControlNetError
from lllite_kit.training.controlnet.train import train_controlnet
from lllite_kit.training.distill.session import distill_controlnet
from lllite_kit.training.session import train_lllite


@pytest.mark.parametrize("train, error, message", [
    (train_lllite, ValueError, "LLLite sample images need a sample guide image"),
    (lambda *a, **k: distill_controlnet(*a, None, **k), ValueError, "LLLite sample images need a sample guide image"),
    (train_controlnet, ControlNetError, "ControlNet sample images need a sample guide image"),
])
def test_samples_without_a_guide_fail_before_training(tiny, tmp_path, train, error, message):
    model = tiny.build_model("sd15", seed=0)
    for every in ({"sample_every_n_steps": 1}, {"sample_every_n_epochs": 1}):
        cfg = TrainConfig(sample_prompts="a cat", **every)
        with pytest.raises(error, match=message):
            train(cfg, model, None, None, [], output_dir=tmp_path)
    # no prompts, or no schedule: no samples, so no guide needed (fails later, on the empty dataset list)
    for cfg in (TrainConfig(sample_every_n_steps=1), TrainConfig(sample_prompts="a cat")):
        with pytest.raises(Exception) as raised:
            train(cfg, model, None, None, [], output_dir=tmp_path)
        assert "sample guide" not in str(raised.value)
