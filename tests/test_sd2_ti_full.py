"""SD2.x (OpenCLIP-H text encoder) in Textual Inversion and full-model training: the embedding
in sd-scripts' single-tensor layout gives core's CLIPTextEncode `embedding:name` exactly the
training conditioning; the full-model checkpoint has core's SD2 keys and model spec; options
SD2 lacks are refused by name."""
import pytest
import safetensors
import safetensors.torch
import torch

import comfy.sd
import comfy.supported_models_base
import nodes
from comfy.text_encoders import sd2_clip
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.full_model import FullModelAdapter, FullModelOptions, kept_weights
from lllite_kit.training.full_model.train import _refuse
from lllite_kit.training.lora.file import base_model_metadata
from lllite_kit.training.textual_inversion import (TextualInversionAdapter, TextualInversionOptions, caption_rewrite,
                                                   start_vectors)
from test_model_family import TinySD20, _tiny_model
from training_helpers import ListData, no_metadata, unit_group_norms


def _sd2(tiny, embeddings=None):
    """A tiny SD2 MODEL (U-Net context 40) and an SD2 CLIP with a 40-wide OpenCLIP-H."""
    with torch.inference_mode():
        model = _tiny_model(TinySD20, tiny.SD15_UNET)
        tiny.fill_seeded(model.model.diffusion_model, 0)
        unit_group_norms(model)
        target = comfy.supported_models_base.ClipTarget(sd2_clip.SD2Tokenizer, sd2_clip.SD2ClipModel)
        clip = comfy.sd.CLIP(target, embedding_directory=embeddings, model_options={"dtype": torch.float32,
                                                                                    "clip_h_model_config": tiny.CLIP_L})
        tiny.fill_seeded(clip.cond_stage_model, 1)
    return model, clip


def test_sd2_textual_inversion_through_core_clip_text_encode(tiny, comfy_dirs):
    folder = comfy_dirs / "models" / "embeddings_sd2"
    model, clip = _sd2(tiny, [str(folder)])
    prompt = "a photo of sks, red"
    with torch.inference_mode(False), trainable_model(model) as tm:
        assert tm.family == "sd2"
        adapter = TextualInversionAdapter(start_vectors(clip, TextualInversionOptions("sks", "cat", 2), 0), "sd2", "sks")
        start = {k: v.detach().clone() for k, v in adapter.vectors.items()}
        text = TextConditioner(clip, "sd2", trainable=True, embeddings=adapter.embeddings("ti_sd2"),
                               rewrite=caption_rewrite("sks", "ti_sd2"))
        data = ListData(n=2, bs=1)
        data.captions = ["a photo of sks 0", "sks, a photo"]
        cfg = TrainConfig(max_train_steps=1, learning_rate=5e-2, output_name="ti_sd2", save_precision="float")
        result = TrainingEngine(cfg, tm, text, adapter, data, folder, no_metadata).run()
        with torch.no_grad():
            trained = text.encode([prompt], torch.device("cpu"), prompts=True)[0]
        text.close()
    assert (adapter.vectors["clip_h"].detach() - start["clip_h"]).abs().max() > 1e-3
    tensors = safetensors.torch.load_file(str(result.final_path))
    assert {k: tuple(v.shape) for k, v in tensors.items()} == {"emb_params": (2, tiny.CLIP_L["hidden_size"])}
    with torch.inference_mode():
        (cond,) = nodes.CLIPTextEncode().encode(clip, prompt.replace("sks", "embedding:ti_sd2"))[0]
    assert torch.equal(cond[0], trained)
    assert base_model_metadata("sd2")["ss_v2"] == "True" and base_model_metadata("sd15")["ss_v2"] == "False"


def test_sd2_full_model_checkpoint_has_cores_sd2_layout(tiny, tmp_path):
    model, clip = _sd2(tiny)
    vae = tiny.build_vae(0)
    with torch.inference_mode(False), trainable_model(model) as tm:
        start = {k: p.detach().clone() for k, p in tm.diffusion_model.named_parameters()}
        with kept_weights(tm.diffusion_model):
            cfg = TrainConfig(max_train_steps=1, learning_rate=1e-3, output_name="full_sd2", save_state=False)
            text = TextConditioner(clip, "sd2")
            adapter = FullModelAdapter(tm.patcher, clip, vae, "sd2")
            result = TrainingEngine(cfg, tm, text, adapter, ListData(n=1, bs=1, size=4), tmp_path, no_metadata).run()
            moved = sum(not torch.equal(p, start[k]) for k, p in tm.diffusion_model.named_parameters())
    assert moved > 0.9 * len(start)
    with safetensors.safe_open(str(result.final_path), "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert {k.split(".")[0] for k in keys} == {"model", "cond_stage_model", "first_stage_model"}
    assert any(k.startswith("cond_stage_model.model.transformer.resblocks.0.attn.in_proj_weight") for k in keys)  # OpenCLIP
    assert meta["modelspec.architecture"] == "stable-diffusion-v2-512"
    _refuse(cfg, "sd2", FullModelOptions())
    with pytest.raises(ValueError, match="save_lora_dim: the LoRA tools have no SD2.x"):
        _refuse(cfg, "sd2", FullModelOptions(save_lora_dim=4))
