"""A tiny Anima MODEL built from comfy/ldm/anima/model.py with the real module names
(blocks.N.self_attn.q_proj, blocks.N.mlp.layer1, llm_adapter.blocks.0.cross_attn.q_proj ...).

ComfyUI's detection only knows the real sizes and core's Anima builds its text adapter at the
full 1024 width (a 33 M-entry embedding alone); the tiny one keeps every name with small widths,
as a `model_base.Anima` (its extra_conds, flow sampling with shift 3, the Wan 2.1 latent format).
"""
import torch

import comfy.ldm.anima.model
import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.sd1_clip
import comfy.supported_models
import comfy.supported_models_base
import comfy.text_encoders.anima
import comfy.text_encoders.llama

from tiny_models import fill_seeded

MODEL_DIM = 64  # differs from the text width on purpose (see tiny_models)
CONTEXT_DIM = 48  # what the text adapter gives the DiT's cross attention
QWEN_DIM = 40  # the text encoder's hidden width the adapter reads
ANIMA_DIT = {
    "image_model": "anima", "max_img_h": 240, "max_img_w": 240, "max_frames": 128,
    "in_channels": 16, "out_channels": 16, "patch_spatial": 2, "patch_temporal": 1,
    "concat_padding_mask": True, "model_channels": MODEL_DIM, "num_blocks": 2, "num_heads": 4,
    "crossattn_emb_channels": CONTEXT_DIM, "pos_emb_cls": "rope3d", "pos_emb_learnable": True,
    "pos_emb_interpolation": "crop", "min_fps": 1, "max_fps": 30, "use_adaln_lora": True,
    "adaln_lora_dim": 16, "extra_per_block_abs_pos_emb": False, "rope_h_extrapolation_ratio": 4.0,
    "rope_w_extrapolation_ratio": 4.0, "rope_t_extrapolation_ratio": 1.0, "rope_enable_fps_modulation": False,
}


class TinyAnimaDiT(comfy.ldm.anima.model.Anima):
    """core's Anima DiT with a 1-layer, narrow text adapter (same module names)."""

    def __init__(self, *args, **kwargs):
        comfy.ldm.anima.model.MiniTrainDIT.__init__(self, *args, **kwargs)
        self.llm_adapter = comfy.ldm.anima.model.LLMAdapter(
            source_dim=QWEN_DIM, target_dim=CONTEXT_DIM, model_dim=32, num_layers=1, num_heads=2,
            device=kwargs.get("device"), dtype=kwargs.get("dtype"), operations=kwargs.get("operations"))


class TinyAnimaModel(comfy.model_base.Anima):
    def __init__(self, model_config, model_type=comfy.model_base.ModelType.FLOW, device=None):
        comfy.model_base.BaseModel.__init__(self, model_config, model_type, device=device, unet_model=TinyAnimaDiT)


class TinyAnima(comfy.supported_models.Anima):
    def get_model(self, state_dict, prefix="", device=None):
        return TinyAnimaModel(self, device=device)


def build_anima(seed: int = 0, dtype: torch.dtype = torch.float32, dit_config: dict | None = None,
                **_ignored) -> comfy.model_patcher.ModelPatcher:
    """A MODEL (ModelPatcher) of the tiny Anima (or of `dit_config`, e.g. the full size for
    benchmarks); kwargs as tiny_models.build_model."""
    model_config = TinyAnima(dict(dit_config or ANIMA_DIT, dtype=dtype))
    model_config.set_inference_dtype(dtype, None)
    model = model_config.get_model({})
    fill_seeded(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    device = comfy.model_management.get_torch_device()
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=device, offload_device=torch.device("cpu"))
    patcher.cached_patcher_init = (build_anima, (seed, dtype, dit_config))
    return patcher


# Qwen3 with the real layer names (layers.N.self_attn.q_proj ...) at a tiny width; core's
# Qwen3_06BModel builds the 0.6 B config, this one passes its own (head_dim stays core's 128).
QWEN3 = {"hidden_size": QWEN_DIM, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 2, "num_key_value_heads": 1}


class TinyQwen3Model(comfy.text_encoders.anima.Qwen3_06BModel):
    def __init__(self, device="cpu", layer="last", layer_idx=None, dtype=None, attention_mask=True, model_options={}):
        comfy.sd1_clip.SDClipModel.__init__(
            self, device=device, layer=layer, layer_idx=layer_idx, textmodel_json_config=dict(QWEN3), dtype=dtype,
            special_tokens={"pad": 151643}, layer_norm_hidden_state=False, model_class=comfy.text_encoders.llama.Qwen3_06B,
            enable_attention_masks=attention_mask, return_attention_masks=attention_mask, model_options=model_options)


class TinyAnimaTE(comfy.text_encoders.anima.AnimaTEModel):
    def __init__(self, device="cpu", dtype=None, model_options={}):
        comfy.sd1_clip.SD1ClipModel.__init__(self, device=device, dtype=dtype, name="qwen3_06b", clip_model=TinyQwen3Model,
                                             model_options=model_options)


_tokenizer = None


def _shared_tokenizer(embedding_directory=None, tokenizer_data={}):
    """core's Anima tokenizer (Qwen2 + T5 vocabularies, ~4 s to build on CPU), built once: it
    holds no state, and CLIP.clone() shares it the same way."""
    global _tokenizer
    if _tokenizer is None:
        _tokenizer = comfy.text_encoders.anima.AnimaTokenizer(embedding_directory=embedding_directory, tokenizer_data=tokenizer_data)
    return _tokenizer


def build_anima_clip(seed: int = 0) -> comfy.sd.CLIP:
    """A CLIP as CLIPLoader(type "stable_diffusion"... "anima") gives it: Qwen3 tokens + T5 ids for the DiT's adapter."""
    target = comfy.supported_models_base.ClipTarget(_shared_tokenizer, TinyAnimaTE)
    clip = comfy.sd.CLIP(target, model_options={"dtype": torch.float32})
    fill_seeded(clip.cond_stage_model, seed + 1)
    return clip


def build_anima_vae(seed: int = 0) -> comfy.sd.VAE:
    """A Wan 2.1 / Qwen-Image layout VAE (16 latent channels, 8x, 5-D latents) at width 8:
    comfy.sd.VAE detects the layout from the keys, as VAELoader does."""
    import comfy.ldm.wan.vae

    net = comfy.ldm.wan.vae.WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                                   temperal_downsample=[False, True, True], dropout=0.0)
    fill_seeded(net, seed + 2)
    return comfy.sd.VAE(sd=net.state_dict())


def build_anima_checkpoint(seed: int = 0):
    """(MODEL, CLIP, VAE) as UNETLoader / CLIPLoader / VAELoader give them for Anima."""
    return build_anima(seed), build_anima_clip(seed), build_anima_vae(seed)
