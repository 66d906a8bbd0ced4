"""Captions from BLIP (base, large) and GIT through transformers, read offline from a
published model folder, with sd-scripts' options (finetune/make_captions.py,
make_captions_by_git.py): beam search or nucleus sampling, max_length 75, min_length 5,
seed 42, "a picture of " as BLIP's prompt (removed from the caption), GIT's word removal.
Batched: one generate call per batch_size images on the model's device."""
import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image

from .model_files import CAPTIONERS, locate

DECODING = ("nucleus sampling", "beam search", "greedy")
REQUIRED_FILES = ("config.json", "model.safetensors", "preprocessor_config.json|processor_config.json", "tokenizer_config.json",
                  "vocab.txt|tokenizer.json")

# make_captions_by_git.py --remove_words: GIT reads text in pictures aloud ("with the words ...").
_GIT_TEXT_PATTERNS = [
    re.compile(r'(has|with|and) the (words?|letters?|name) (" ?[^"]*"|\w+)( ?(is )?(on|in) (the |her |their |him )?\w+)?'),
    re.compile(r'(with a sign )?that says ?(" ?[^"]*"|\w+)( ?on it)?'),
    re.compile(r"(with a sign )?that says ?(' ?(i'm)?[^']*'|\w+)( ?on it)?"),
    re.compile(r"with the number \d+ on (it|\w+ \w+)"),
    re.compile(r'with the words "'),
    re.compile(r"word \w+ on it"),
    re.compile(r"that says the word \w+ on it"),
    re.compile("that says'the word \"( on it)?"),
]


@dataclass(frozen=True)
class CaptionOptions:
    decoding: str = "nucleus sampling"  # make_captions.py without --beam_search
    num_beams: int = 1
    top_p: float = 0.9
    max_length: int = 75
    min_length: int = 5
    seed: int = 42
    batch_size: int = 8
    prompt: str = "a picture of "  # BLIP only
    remove_words: bool = False  # GIT only

    def generate_kwargs(self, kind: str) -> dict:
        """What make_captions.py hands to generate: nucleus sampling with repetition penalty
        1.1, beam search without; GIT as make_captions_by_git.py (greedy) unless asked."""
        if self.decoding not in DECODING:
            raise ValueError(f"decoding must be one of {DECODING}, got {self.decoding!r}.")
        kw = {"max_length": self.max_length, "min_length": self.min_length}
        if self.decoding == "nucleus sampling":
            return kw | {"do_sample": True, "top_p": self.top_p, "repetition_penalty": 1.1 if kind == "blip" else 1.0}
        if self.decoding == "beam search":
            return kw | {"do_sample": False, "num_beams": self.num_beams, "repetition_penalty": 1.0}
        return kw | {"do_sample": False, "num_beams": 1}


def remove_git_words(caption: str) -> str:
    for pattern in _GIT_TEXT_PATTERNS:
        caption = pattern.sub("", caption)
    return caption


class Captioner:
    """A loaded BLIP or GIT folder (config.json model_type "blip" or "git")."""

    def __init__(self, folder: Path, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32):
        from transformers import AutoProcessor, BlipForConditionalGeneration, GitForCausalLM

        model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type")
        classes = {"blip": BlipForConditionalGeneration, "git": GitForCausalLM}
        if model_type not in classes:
            raise ValueError(f"{folder} holds a {model_type!r} model; captioning reads BLIP (blip) or GIT (git) folders.")
        self.kind, self.folder = model_type, folder
        self.processor = AutoProcessor.from_pretrained(folder, local_files_only=True)
        # use_safetensors: a pickled .bin beside the weights is never read
        self.model = classes[model_type].from_pretrained(folder, local_files_only=True, use_safetensors=True)
        self.model.to(device=device, dtype=dtype).eval()

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def inputs(self, images: list[Image.Image], options: CaptionOptions) -> dict:
        rgb = [im.convert("RGB") for im in images]
        if self.kind == "blip" and options.prompt:
            batch = self.processor(images=rgb, text=[options.prompt] * len(rgb), return_tensors="pt")
        else:
            batch = self.processor(images=rgb, return_tensors="pt")
        dtype = next(self.model.parameters()).dtype
        return {k: v.to(self.device, dtype=dtype if v.is_floating_point() else v.dtype) for k, v in batch.items()
                if k in ("pixel_values", "input_ids", "attention_mask")}

    def decode(self, ids: torch.Tensor, options: CaptionOptions) -> list[str]:
        captions = self.processor.batch_decode(ids, skip_special_tokens=True)
        if self.kind == "blip" and options.prompt:
            prompt = options.prompt.strip()
            captions = [c[len(prompt):].strip() if c.startswith(prompt) else c.strip() for c in captions]
        if self.kind == "git" and options.remove_words:
            captions = [remove_git_words(c) for c in captions]
        return [c.strip() for c in captions]

    @torch.inference_mode()
    def caption(self, images: list[Image.Image], options: CaptionOptions = CaptionOptions(),
                progress: Callable[[int, int], None] | None = None,
                check_interrupt: Callable[[], None] | None = None) -> list[str]:
        """One caption per image, batch_size images per generate call. The seed is set once,
        before the first batch (as make_captions.py), without touching the caller's RNG."""
        kwargs = options.generate_kwargs(self.kind)
        out: list[str] = []
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(options.seed)
            for start in range(0, len(images), max(1, options.batch_size)):
                if check_interrupt is not None:
                    check_interrupt()
                chunk = images[start:start + max(1, options.batch_size)]
                ids = self.model.generate(**self.inputs(chunk, options), **kwargs)
                out += self.decode(ids, options)
                if progress is not None:
                    progress(len(out), len(images))
        return out


_LOADED: dict[tuple, Captioner] = {}


def load_captioner(name: str, dirs: list[str], device: torch.device | str = "cpu",
                   dtype: torch.dtype = torch.float32) -> Captioner:
    """The folder `name` from `dirs` (models/captioners), kept loaded between runs until
    another folder, device or dtype is asked for, or the weights file changes."""
    folder = locate(name, dirs, REQUIRED_FILES, CAPTIONERS, "captioners")
    key = (str(folder), (folder / "model.safetensors").stat().st_mtime_ns, str(device), dtype)
    if key not in _LOADED:
        _LOADED.clear()
        _LOADED[key] = Captioner(folder, device, dtype)
    return _LOADED[key]
