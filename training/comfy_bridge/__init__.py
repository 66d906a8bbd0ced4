"""The one place that knows ComfyUI's model objects (ModelPatcher, CLIP, VAE); the rest of
training/ takes plain tensors and modules from here. One job per file:

- model.py: which models the trainer takes, their noise schedule, and the diffusion model made
  trainable on the training device (autograd-safe weights, gradient checkpointing, fp8 base).
- text.py: captions -> cross-attention context and SDXL's pooled output, cached per caption.
- vae.py: images -> scaled latents, and the VAE's identity for latent caches.
- paths.py: ComfyUI's folders for training files, and the files a model was loaded from.

The names below are this package's interface (`from .comfy_bridge import X`).
"""
from .model import (NoiseSchedule, TrainingModel, UnsupportedModel, reload_training_model, set_gradient_checkpointing,
                    trainable_family, trainable_model, unload_from_device)
from .paths import default_output_dir, latent_cache_dir, model_file, model_source_name, vae_file
from .text import TextConditioner, text_encoder_modules, token_embedding_tables, word_token_ids
from .vae import latent_encoder, vae_identity

__all__ = [
    "NoiseSchedule", "TextConditioner", "TrainingModel", "UnsupportedModel", "default_output_dir", "latent_cache_dir",
    "latent_encoder", "model_file", "model_source_name", "reload_training_model", "set_gradient_checkpointing",
    "text_encoder_modules", "token_embedding_tables", "trainable_family", "trainable_model", "unload_from_device",
    "vae_file", "vae_identity", "word_token_ids",
]
