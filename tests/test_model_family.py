"""model_family.py: one family for a ComfyUI model config, model or MODEL, and the refusals
LoRA, LLLite and the trainer build on it."""
import pytest
import torch

import comfy.model_base
import comfy.model_patcher
import comfy.supported_models as sm
from lllite_kit.lllite.patch import model_label
from lllite_kit.model_family import model_family
from lllite_kit.training.comfy_bridge import UnsupportedModel, trainable_family
from lllite_kit.training.lora.targets import lora_family

# ComfyUI's own detection classes (what its checkpoint loader picks) -> family
CONFIGS = {
    sm.SDXL: "sdxl", sm.SSD1B: "sdxl", sm.KOALA_700M: "sdxl", sm.SDXL_instructpix2pix: "sdxl",
    sm.SD15: "sd15", sm.SD15_instructpix2pix: "sd15",
    sm.SD20: "sd2", sm.SD21UnclipH: "sd2", sm.SD_X4Upscaler: "sd2", sm.LotusD: "sd2",
    sm.SDXLRefiner: None, sm.SVD_img2vid: None, sm.Stable_Zero123: None, sm.SD3: None, sm.Flux: None,
}


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_family_of_comfyuis_model_configs(cls):
    assert model_family(cls(dict(cls.unet_config))) == CONFIGS[cls]


_TINY_HEADS = {"num_heads": -1, "num_head_channels": 16}


class TinySD20(sm.SD20):
    unet_extra_config = _TINY_HEADS


class TinySD15Pix2Pix(sm.SD15_instructpix2pix):
    unet_extra_config = _TINY_HEADS


class TinySDXLPix2Pix(sm.SDXL_instructpix2pix):
    unet_extra_config = _TINY_HEADS


def _tiny_model(config_cls, unet_config: dict, **changes) -> comfy.model_patcher.ModelPatcher:
    """A MODEL of `config_cls` with the tiny U-Net (tests/tiny_nodes/tiny_models.py)."""
    config = config_cls(dict(unet_config, dtype=torch.float32, **changes))
    config.set_inference_dtype(torch.float32, None)
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(config.get_model({}), load_device=cpu, offload_device=cpu)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_one_answer_for_config_model_and_patcher(tiny, family):
    patcher = tiny.build_model(family)
    assert model_family(patcher) == model_family(patcher.model) == model_family(patcher.model.model_config) == family
    assert trainable_family(patcher) == lora_family(patcher.model.model_config) == family
    assert model_label(patcher) == {"sd15": "'SD1.5 (TinySD15)'", "sdxl": "'SDXL (TinySDXL)'"}[family]


def test_sd2_trains_but_has_no_lora_or_lllite_names(tiny):
    # the family comes from the config class, not from a width: a tiny SD2 has context_dim 40
    patcher = _tiny_model(TinySD20, tiny.SD15_UNET)
    assert type(patcher.model) is comfy.model_base.BaseModel
    assert trainable_family(patcher) == "sd2"
    with pytest.raises(ValueError, match="LoRA training supports SD1.5, SDXL and Anima base models; this model is TinySD20"):
        lora_family(patcher.model.model_config)
    assert model_label(patcher) == "'sd2 (TinySD20)'"


@pytest.mark.parametrize("variant", ["sd15 inpainting", "sd15 instruct-pix2pix", "sdxl instruct-pix2pix"])
def test_trainer_refuses_variants_with_other_inputs(tiny, variant):
    """The trainer feeds the U-Net 4 latent channels and nothing to concatenate: inpainting
    and instruct-pix2pix U-Nets keep their family's names but cannot be trained here."""
    patcher = {
        "sd15 inpainting": lambda: _tiny_model(tiny.TinySD15, tiny.SD15_UNET, in_channels=9),
        "sd15 instruct-pix2pix": lambda: _tiny_model(TinySD15Pix2Pix, tiny.SD15_UNET, in_channels=8),
        "sdxl instruct-pix2pix": lambda: _tiny_model(TinySDXLPix2Pix, tiny.SDXL_UNET, in_channels=8),
    }[variant]()
    family = variant.split()[0]
    assert model_family(patcher) == family == lora_family(patcher.model.model_config)
    config_name, model_name = type(patcher.model.model_config).__name__, type(patcher.model).__name__
    with pytest.raises(UnsupportedModel, match=rf"SD1.x, SD2.x and SDXL text-to-image U-Nets; this model is "
                                                 rf"{config_name} \({model_name}\)"):
        trainable_family(patcher)


def test_other_architectures_are_no_family():
    assert model_family(object()) is None
    with pytest.raises(ValueError, match="LoRA training supports SD1.5, SDXL and Anima base models; this model is object"):
        lora_family(object())
