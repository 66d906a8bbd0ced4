"""Full-model training (DreamBooth / fine-tuning) on the engine: the saved single file loads in
core's CheckpointLoaderSimple and predicts exactly what the model predicted at training time;
the graph's model gets its weights back; block-wise rates and refused options."""
import pytest
import torch

import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models_base
import nodes
from checkpoint_files import detectable_sd15, taesd
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.full_model import (FullModelAdapter, FullModelOptions, checkpoint_state_dict, kept_weights,
                                           parse_block_lr, sdxl_block_index)
from training_helpers import ListData, no_metadata, unit_group_norms


# a CLIP-L as wide as the detectable U-Net's context (768) but one layer deep: cheap to build and run
NARROW_CLIP_L = {"hidden_size": 768, "intermediate_size": 64, "num_attention_heads": 2, "num_hidden_layers": 1,
                 "projection_dim": 768}


def _prediction(tm, context):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 4, 4, generator=g)
    with torch.no_grad():
        return tm.predict(x, torch.tensor([350]), context, None)


def test_checkpoint_loads_in_core_and_predicts_like_training(tiny, comfy_dirs):
    """ComfyUI detects SD1.5 from a file by its widths only, so the U-Net is checkpoint_files'
    detectable one; the CLIP stays out of this file (core would build the full CLIP-L to load it)."""
    cpu = torch.device("cpu")
    with torch.inference_mode():
        model = comfy.model_patcher.ModelPatcher(detectable_sd15(tiny, 0), load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=cpu)
        unit_group_norms(model)
        target = comfy.supported_models_base.ClipTarget(comfy.sd1_clip.SD1Tokenizer, comfy.sd1_clip.SD1ClipModel)
        clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32, "clip_l_model_config": NARROW_CLIP_L})
        tiny.fill_seeded(clip.cond_stage_model, 1)
        vae = comfy.sd.VAE(sd=taesd(tiny, 2).state_dict())
    checkpoints = comfy_dirs / "models" / "checkpoints"
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, tm.family)
        context = text.encode(["a photo of thing 0"], tm.device)[0]
        base = _prediction(tm, context)
        with kept_weights(tm.diffusion_model):
            adapter = FullModelAdapter(tm.patcher, None, vae, tm.family)
            cfg = TrainConfig(max_train_steps=1, learning_rate=1e-3, output_name="full_sd15", save_precision="float")
            result = TrainingEngine(cfg, tm, text, adapter, ListData(n=1, bs=1, size=4), checkpoints, no_metadata).run()
            trained = _prediction(tm, context)
        restored = _prediction(tm, context)
    assert (trained - base).abs().max() > 1e-3  # training moved the U-Net
    torch.testing.assert_close(restored, base, rtol=0, atol=0)  # and the graph's model is as it was

    loaded_model, _, loaded_vae = nodes.CheckpointLoaderSimple().load_checkpoint(result.final_path.name)[:3]
    assert type(loaded_model.model.model_config).__name__ == "SD15"
    with torch.inference_mode(False), trainable_model(loaded_model) as tm:
        loaded = _prediction(tm, context)
    torch.testing.assert_close(loaded, trained, rtol=0, atol=0)
    torch.testing.assert_close(loaded_vae.get_sd(), vae.get_sd(), rtol=0, atol=0)


@pytest.mark.parametrize("family", ["sd15", "sdxl"])
def test_checkpoint_keys_are_cores_layout(family, tiny):
    """U-Net, text encoder(s) and VAE under the keys core's save_checkpoint writes."""
    with torch.inference_mode():
        model, clip, vae = tiny.build_checkpoint(family, 0)
        sd = checkpoint_state_dict(model, clip, vae)
    prefixes = {k.split(".")[0] + "." + k.split(".")[1] if k.startswith("conditioner") else k.split(".")[0] for k in sd}
    clip_keys = ({"conditioner.embedders"} if family == "sdxl" else {"cond_stage_model"})
    assert prefixes == {"model", "first_stage_model"} | clip_keys
    if family == "sdxl":
        assert any(k.startswith("conditioner.embedders.0.transformer.text_model.") for k in sd)
        assert any(k.startswith("conditioner.embedders.1.model.transformer.resblocks.") for k in sd)
    assert len([k for k in sd if k.startswith("model.diffusion_model.")]) == len(model.model.diffusion_model.state_dict())


def test_sdxl_block_lr_groups_and_text_encoder_rates(tiny):
    with torch.inference_mode():
        model, clip = tiny.build_model("sdxl", 0), tiny.build_clip("sdxl", 0)
    assert [sdxl_block_index(n) for n in ("time_embed.0.weight", "label_emb.0.0.bias", "input_blocks.8.0.x",
                                          "middle_block.2.y", "output_blocks.0.z", "out.2.weight")] == [0, 0, 9, 12, 13, 22]
    lrs = [0.0] + [1e-5] * 21 + [2e-5]
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, "sdxl", trainable=True)
        adapter = FullModelAdapter(tm.patcher, clip, None, "sdxl", True, {"te1": 3e-6, "te2": None}, parse_block_lr(lrs))
        adapter.attach(tm.diffusion_model, text.modules())
        groups = {g["name"]: g["lr"] for g in adapter.param_groups(1e-4, 4e-6)}
        frozen = [n for n, p in tm.diffusion_model.named_parameters() if not p.requires_grad]
        adapter.detach()
        text.close()
    assert groups["te1"] == 3e-6 and groups["te2"] == 4e-6 and groups["unet_block22"] == 2e-5
    assert "unet_block0" not in groups and frozen and all(n.startswith(("time_embed", "label_emb")) for n in frozen)
    with pytest.raises(ValueError, match="23 values"):
        FullModelOptions(block_lr="1,2,3")
