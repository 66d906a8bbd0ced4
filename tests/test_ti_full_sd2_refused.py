"""SD2.x is not trained by Textual Inversion or the full-model trainer yet: both refuse it by
name before any work (no dataset is read)."""
import pytest
import torch

from lllite_kit.training.config import TrainConfig
from lllite_kit.training.full_model import FullModelOptions, train_full_model
from lllite_kit.training.textual_inversion import TextualInversionOptions, train_textual_inversion
from test_model_family import TinySD20, _tiny_model


def test_sd2_is_refused_by_name(tiny, tmp_path):
    model = _tiny_model(TinySD20, tiny.SD15_UNET)
    cfg = TrainConfig(max_train_steps=1)
    with pytest.raises(ValueError, match="Textual Inversion training supports SD1.x and SDXL models; this one is sd2"):
        train_textual_inversion(cfg, model, None, None, [], TextualInversionOptions("tok"), output_dir=tmp_path)
    with pytest.raises(ValueError, match="full-model training supports SD1.x and SDXL models; this one is sd2"):
        with torch.inference_mode(False):
            train_full_model(cfg, model, None, None, [], FullModelOptions(), output_dir=tmp_path)
    assert not any(tmp_path.iterdir())
