"""Shared bits of the LoRA tests: the tiny model's text encoders by role, a fixed U-Net
prediction, and LoRA weights that actually change the output."""
import torch

from lllite_kit.training.lora import LoRAAdapter, LoRAConfig


def text_encoders(clip, family: str) -> dict:
    model = clip.cond_stage_model
    return {"te1": model.clip_l, "te2": model.clip_g} if family == "sdxl" else {"te": model.clip_l}


def unet_prediction(diffusion_model, tiny, family: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(11)
    context_dim = tiny.SDXL_CONTEXT_DIM if family == "sdxl" else tiny.SD15_CONTEXT_DIM
    x = torch.randn(1, 4, 8, 8, generator=g)
    context = torch.randn(1, 77, context_dim, generator=g)
    extra = {"y": torch.randn(1, tiny.SDXL_UNET["adm_in_channels"], generator=g)} if family == "sdxl" else {}
    with torch.no_grad():
        return diffusion_model(x, torch.tensor([500.0]), context=context, **extra)


def randomize(adapter: LoRAAdapter, seed: int = 5, scale: float = 1.0) -> None:
    """Non-zero up weights (they start at zero) so the LoRA changes predictions."""
    g = torch.Generator().manual_seed(seed)
    sd = adapter.state_dict()
    for k, v in sd.items():
        if k.endswith("lora_up.weight"):
            sd[k] = torch.randn(v.shape, generator=g) * scale
    adapter.load_state_dict(sd)


def attached(tiny, family: str, seed: int = 0, **options):
    """(model, clip, adapter) with the adapter attached to the U-Net and text encoders."""
    model, clip = tiny.build_model(family, seed), tiny.build_clip(family, seed)
    config = LoRAConfig(**options)
    adapter = LoRAAdapter(config, model.model.model_config)
    adapter.attach(model.model.diffusion_model, text_encoders(clip, family) if config.train_text_encoder else {})
    return model, clip, adapter


def load_in_core(model, clip, name: str, module_names, caplog):
    """core's LoraLoader on the file `name` in the loras folder: no "not loaded" warning and one
    patch per module (U-Net modules on the model, the rest on CLIP). Returns (model, clip)."""
    import logging

    import nodes

    caplog.clear()
    caplog.set_level(logging.WARNING)
    model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, name, 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()] == []
    n_unet = sum(1 for n in module_names if n.startswith("lora_unet_"))
    assert len(model_lora.patches) == n_unet
    assert len(clip_lora.patcher.patches) == len(module_names) - n_unet
    return model_lora, clip_lora
