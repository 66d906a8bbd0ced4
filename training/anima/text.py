"""Captions -> Anima's DiT context, for the one engine (standing in for comfy_bridge's
TextConditioner): the Qwen3 hidden states and the T5 token ids of ComfyUI's Anima CLIP, turned
into the cross-attention context by the DiT's own frozen text adapter (llm_adapter), exactly as
core's model_base.Anima does at sampling time. Frozen Qwen3: cached per caption. Trained Qwen3
(a LoRA on it, sd-scripts' default unless network_train_unet_only): every call encodes with
gradients, through the frozen llm_adapter, so they reach the encoder's LoRA."""
import torch

from ..comfy_bridge.model import make_autograd_safe


class AnimaTextConditioner:
    def __init__(self, clip, diffusion_model: torch.nn.Module, trainable: bool = False):
        self.diffusion_model, self.trainable = diffusion_model, trainable
        self.clip = clip.clone() if trainable else clip  # a clone: the LoRA hooks stay off the caller's CLIP patcher
        self.cache: dict[tuple[bool, str], torch.Tensor] = {}
        if trainable:
            if torch.is_inference_mode_enabled():
                raise RuntimeError("a trainable text encoder must be prepared under torch.inference_mode(False)")
            make_autograd_safe(self.clip.cond_stage_model)

    def _encode_one(self, caption: str) -> torch.Tensor:
        if self.clip is None:
            raise RuntimeError(f"caption {caption!r} was not encoded before the text encoder was released")
        out = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_dict=True)
        dm = self.diffusion_model
        param = next(dm.parameters())
        return dm.preprocess_text_embeds(
            out["cond"].to(param.device, param.dtype), out["t5xxl_ids"].unsqueeze(0).to(param.device),
            t5xxl_weights=out["t5xxl_weights"].view(1, -1, 1).to(param.device, param.dtype)).float()

    def precompute(self, captions, prompts: bool = False) -> None:
        with torch.no_grad():
            for c in captions:
                if (prompts, c) not in self.cache:
                    self.cache[(prompts, c)] = self._encode_one(c).cpu()

    def encode(self, captions: list[str], device, prompts: bool = False):
        """-> (context (B, 512, width), None): every caption padded to 512 tokens as core does."""
        if self.trainable:
            return torch.cat([self._encode_one(c) for c in captions]).to(device), None
        self.precompute(captions, prompts)
        return torch.cat([self.cache[(prompts, c)] for c in captions]).to(device), None

    def modules(self) -> dict:
        """The Qwen3 encoder under its kohya role "te" (sd-scripts' lora_te_ names below it)."""
        return {"te": self.clip.cond_stage_model.qwen3_06b} if self.trainable else {}

    def release(self) -> None:
        if not self.trainable:
            self.clip = None

    def close(self) -> None:
        pass
