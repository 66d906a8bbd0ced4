"""Captions -> Anima's DiT context, for the one engine (standing in for comfy_bridge's
TextConditioner): the Qwen3 hidden states and the T5 token ids of ComfyUI's Anima CLIP, turned
into the cross-attention context by the DiT's own frozen text adapter (llm_adapter), exactly as
core's model_base.Anima does at sampling time; cached per caption since nothing here trains."""
import torch


class AnimaTextConditioner:
    trainable = False

    def __init__(self, clip, diffusion_model: torch.nn.Module):
        self.clip, self.diffusion_model = clip, diffusion_model
        self.cache: dict[tuple[bool, str], torch.Tensor] = {}

    def _encode_one(self, caption: str) -> torch.Tensor:
        if self.clip is None:
            raise RuntimeError(f"caption {caption!r} was not encoded before the text encoder was released")
        out = self.clip.encode_from_tokens(self.clip.tokenize(caption), return_dict=True)
        dm = self.diffusion_model
        param = next(dm.parameters())
        return dm.preprocess_text_embeds(
            out["cond"].to(param.device, param.dtype), out["t5xxl_ids"].unsqueeze(0).to(param.device),
            t5xxl_weights=out["t5xxl_weights"].view(1, -1, 1).to(param.device, param.dtype)).float().cpu()

    def precompute(self, captions, prompts: bool = False) -> None:
        with torch.no_grad():
            for c in captions:
                if (prompts, c) not in self.cache:
                    self.cache[(prompts, c)] = self._encode_one(c)

    def encode(self, captions: list[str], device, prompts: bool = False):
        """-> (context (B, 512, width), None): every caption padded to 512 tokens as core does."""
        self.precompute(captions, prompts)
        return torch.cat([self.cache[(prompts, c)] for c in captions]).to(device), None

    def modules(self) -> dict:
        return {}

    def release(self) -> None:
        self.clip = None

    def close(self) -> None:
        pass
