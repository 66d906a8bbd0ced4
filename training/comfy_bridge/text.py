"""Captions -> the U-Net's text conditioning: TextConditioner (cross-attention context and
SDXL's pooled output, cached per caption while the encoders are frozen), and what trained
encoders need (their transformers by kohya role, CLIP layers that autograd accepts).
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import TYPE_CHECKING

import torch

import comfy.clip_model
import comfy.sd1_clip

from .model import make_autograd_safe, unload_from_device

if TYPE_CHECKING:
    from comfy.sd import CLIP


def text_encoder_modules(clip: CLIP, family: str) -> dict[str, torch.nn.Module]:
    """The CLIP transformers by their kohya role: te1 (CLIP-L) / te2 (CLIP-G) on SDXL, te
    (CLIP-L, or OpenCLIP-H on SD2) on SD1.x/2.x."""
    csm = clip.cond_stage_model
    if family == "sdxl":
        return {"te1": csm.clip_l.transformer, "te2": csm.clip_g.transformer}
    return {"te": getattr(csm, csm.clip).transformer}


def _sub_tokenizers(tokenizer) -> dict[str, comfy.sd1_clip.SDTokenizer]:
    """ComfyUI's per-encoder tokenizers by attribute name ("clip_l", "clip_g"): the same names
    as the encoders on cond_stage_model."""
    return {k: v for k, v in vars(tokenizer).items() if isinstance(v, comfy.sd1_clip.SDTokenizer)}


def token_embedding_tables(clip: CLIP) -> dict[str, torch.Tensor]:
    """Each encoder's token-embedding table [vocab, width], by the key its tokenizer reads from
    embedding files (SDTokenizer.embedding_key: "clip_l", "clip_g")."""
    csm = clip.cond_stage_model
    return {tok.embedding_key: getattr(csm, name).transformer.get_input_embeddings().weight
            for name, tok in _sub_tokenizers(clip.tokenizer).items()}


def word_token_ids(clip: CLIP, text: str) -> dict[str, list[int]]:
    """The vocabulary ids of `text` (no start/end token) per embedding key."""
    out = {}
    for tok in _sub_tokenizers(clip.tokenizer).values():
        ids = tok.tokenizer(text)["input_ids"]
        out[tok.embedding_key] = ids[tok.tokens_start:-1 if tok.tokenizer_adds_end_token else None]
    return out


def _with_embeddings(tokenizer, embeddings: dict[str, dict[str, torch.Tensor]]):
    """A copy of ComfyUI's tokenizer (the original is shared by every clone of the CLIP) in
    which `embedding:<name>` of the given names resolves to the given tensors, by the
    tokenizer's embedding key, kept with their autograd graph; other names still come from the
    embeddings folder. ComfyUI parses the word as for a file (trailing commas, `<`/`[` cut)."""
    tokenizer = copy.copy(tokenizer)
    for attr, sub in _sub_tokenizers(tokenizer).items():
        sub = copy.copy(sub)
        from_folder = sub._try_get_embedding

        def lookup(name: str, sub=sub, from_folder=from_folder):
            embed, word, leftover = from_folder(name)
            own = embeddings.get(word.strip(","))
            return (own[sub.embedding_key], word, leftover) if own is not None else (embed, word, leftover)

        sub._try_get_embedding = lookup
        if sub.embedding_directory is None:  # None turns `embedding:` words into plain text
            sub.embedding_directory = []
        setattr(tokenizer, attr, sub)
    return tokenizer


def _lcm_repeat(contexts: list[torch.Tensor]) -> torch.Tensor:
    """Batch contexts of different token lengths (long captions give 77 x k tokens) the way
    ComfyUI batches conds when sampling: each repeated up to the least common multiple."""
    lengths = [c.shape[1] for c in contexts]
    lcm = math.lcm(*lengths)
    return torch.cat([c.repeat(1, lcm // c.shape[1], 1) for c in contexts])


class _OutOfPlaceClipLayer:
    """ComfyUI's CLIPLayer adds its residuals in place (x += ...), which autograd refuses once
    the layer norm saved x for backward; the same sums out of place, for trained encoders."""

    def __init__(self, layer):
        self.layer = layer

    def __call__(self, x, mask=None, optimized_attention=None):
        layer = self.layer
        x = x + layer.self_attn(layer.layer_norm1(x), mask, optimized_attention)
        return x + layer.mlp(layer.layer_norm2(x))


def _set_clip_trainable_forward(module: torch.nn.Module, enabled: bool) -> None:
    for m in module.modules():
        if isinstance(m, comfy.clip_model.CLIPLayer):
            if enabled:
                m.forward = _OutOfPlaceClipLayer(m)
            elif isinstance(m.__dict__.get("forward"), _OutOfPlaceClipLayer):
                del m.forward


class TextConditioner:
    """Captions -> (context, pooled). Frozen encoders: outputs are computed without gradients
    and kept per caption for captions given to precompute() (the fixed captions of a dataset,
    the sample prompts); `release()` then lets the encoders leave the device. Trained
    encoders (adapter.trains_text_encoders): every call encodes with gradients.

    Captions: ComfyUI's tokenizer splits text into 77-token windows (start, up to 75 tokens,
    end; a word of under 8 tokens is not split, so a window may hold fewer) and the encoder
    concatenates the windows' outputs. max_tokens (75/150/225, sd-scripts' max_token_length)
    keeps the first 1/2/3 windows; None keeps all. caption_weights: ComfyUI's (word:1.2)
    emphasis in captions (sd-scripts' weighted_captions); off, brackets are plain text.
    Sample prompts (prompts=True) are encoded as ComfyUI encodes a prompt: every window, weights on.

    embeddings (Textual Inversion): {name: {embedding key: [n, width] tensor}}; `embedding:name`
    in captions and prompts then uses these tensors (with their gradients) instead of a file.
    rewrite(text, prompts) -> text: applied to each caption / prompt before tokenizing (the
    token string -> `embedding:name`, caption templates); for trainable (uncached) use."""

    def __init__(self, clip: CLIP, family: str, trainable: bool = False, clip_skip: int = 1,
                 max_tokens: int | None = None, caption_weights: bool = True,
                 embeddings: dict[str, dict[str, torch.Tensor]] | None = None,
                 rewrite: Callable[[str, bool], str] | None = None):
        if max_tokens is not None and (max_tokens < 75 or max_tokens % 75):
            raise ValueError(f"max_tokens must be a multiple of 75 (75, 150, 225), not {max_tokens}")
        self.max_windows = None if max_tokens is None else max_tokens // 75
        self.caption_weights = caption_weights
        self.clip = clip.clone()
        if embeddings:
            self.clip.tokenizer = _with_embeddings(self.clip.tokenizer, embeddings)
        self.rewrite = rewrite
        if clip_skip > 1 and family != "sdxl":  # SDXL always uses the penultimate layers
            self.clip.clip_layer(-clip_skip)
        self.family = family
        self.trainable = trainable
        self.cache: dict[tuple[bool, str], tuple[torch.Tensor, torch.Tensor | None]] = {}  # (prompts, text)
        if trainable:
            if torch.is_inference_mode_enabled():
                raise RuntimeError("a trainable text encoder must be prepared under torch.inference_mode(False)")
            make_autograd_safe(self.clip.cond_stage_model)
            _set_clip_trainable_forward(self.clip.cond_stage_model, True)

    def close(self) -> None:
        """Undo what training needed on the shared encoder modules."""
        if self.trainable and self.clip is not None:
            _set_clip_trainable_forward(self.clip.cond_stage_model, False)

    def modules(self) -> dict[str, torch.nn.Module]:
        return text_encoder_modules(self.clip, self.family)

    def tokenize(self, text: str, prompts: bool = False) -> dict:
        """ComfyUI's tokens of `text` ({encoder: [77-token windows]}), cut to max_tokens for captions."""
        if self.rewrite is not None:
            text = self.rewrite(text, prompts)
        if prompts:
            return self.clip.tokenize(text)
        tokens = self.clip.tokenize(text, disable_weights=not self.caption_weights)
        return tokens if self.max_windows is None else {k: v[:self.max_windows] for k, v in tokens.items()}

    def _encode_one(self, caption: str, prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.clip is None:
            raise RuntimeError(f"caption {caption!r} was not encoded before the text encoders were released")
        cond, pooled = self.clip.encode_from_tokens(self.tokenize(caption, prompts), return_pooled=True)
        return cond, (pooled if self.family == "sdxl" else None)

    def precompute(self, captions, prompts: bool = False) -> None:
        with torch.no_grad():
            for c in captions:
                if (prompts, c) not in self.cache:
                    cond, pooled = self._encode_one(c, prompts)
                    self.cache[(prompts, c)] = (cond.detach().cpu(), None if pooled is None else pooled.detach().cpu())

    def encode(self, captions: list[str], device, prompts: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Captions (prompts=False) or sample prompts (prompts=True) -> (context, pooled) on `device`."""
        outs = []
        for c in captions:
            if not self.trainable and (prompts, c) in self.cache:
                outs.append(self.cache[(prompts, c)])
            else:
                with torch.set_grad_enabled(self.trainable and torch.is_grad_enabled()):
                    outs.append(self._encode_one(c, prompts))
        context = _lcm_repeat([o[0].to(device) for o in outs])
        pooled = None if outs[0][1] is None else torch.cat([o[1].to(device) for o in outs])
        return context, pooled

    def release(self) -> None:
        """Frozen encoders whose every caption is cached: off the device, reference dropped."""
        if self.trainable or self.clip is None:
            return
        unload_from_device(self.clip.patcher)
        self.clip = None
