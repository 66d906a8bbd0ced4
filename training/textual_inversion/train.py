"""One Textual Inversion run (sd-scripts' train_textual_inversion.py / sdxl_train_textual_inversion.py)
on the one engine: the vectors start from the init word's token embeddings, captions name the
token string (or come from a template), and the file is written in the embeddings layout."""
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from ..comfy_bridge import token_embedding_tables, trainable_family, word_token_ids
from ..config import TrainConfig
from ..data.config import DatasetConfig
from ..engine import TrainHooks, TrainResult
from ..lora.file import base_model_metadata, training_metadata
from ..session import run_training
from .adapter import TextualInversionAdapter
from .captions import caption_rewrite
from .embedding import initial_vectors, load_embedding, memory_vectors
from .templates import TEMPLATES

log = logging.getLogger(__name__)


@dataclass
class TextualInversionOptions:
    """sd-scripts' --token_string, --init_word, --num_vectors_per_token,
    --use_object_template / --use_style_template (templates), --weights (start_from)."""

    token_string: str
    init_word: str = ""
    num_vectors_per_token: int = 1
    templates: str = "none"  # "none" | "object" | "style"
    start_from: str | None = None  # an embedding file to continue from

    def __post_init__(self):
        if not self.token_string.strip() or len(self.token_string.split()) != 1:
            raise ValueError(f"token_string must be one word without spaces, got {self.token_string!r}")
        if self.num_vectors_per_token < 1:
            raise ValueError(f"num_vectors_per_token must be >= 1, got {self.num_vectors_per_token}")
        if self.templates not in TEMPLATES:
            raise ValueError(f"templates must be one of {', '.join(TEMPLATES)}, not {self.templates!r}")


def start_vectors(clip, options: TextualInversionOptions, seed: int) -> dict[str, torch.Tensor]:
    tables = token_embedding_tables(clip)
    if options.start_from:
        vectors = memory_vectors(load_embedding(options.start_from), list(tables), options.start_from)
        bad = {k: tuple(v.shape) for k, v in vectors.items() if v.ndim != 2 or v.shape[1] != tables[k].shape[1]}
        if bad:
            raise ValueError(f"{options.start_from}: vectors {bad} do not fit this model's text encoders "
                             f"(widths {({k: t.shape[1] for k, t in tables.items()})})")
        return vectors
    ids = word_token_ids(clip, options.init_word) if options.init_word.strip() else {}
    longest = max((len(v) for v in ids.values()), default=0)
    if longest > options.num_vectors_per_token:
        log.warning("init_word %r has %d tokens, more than num_vectors_per_token (%d): only the first %d are used",
                    options.init_word, longest, options.num_vectors_per_token, options.num_vectors_per_token)
    return initial_vectors(tables, ids, options.num_vectors_per_token, seed)


def train_textual_inversion(cfg: TrainConfig, model, clip, vae, datasets: Sequence[DatasetConfig],
                            options: TextualInversionOptions, *, output_dir: str | Path, model_name: str = "",
                            hooks: TrainHooks | None = None, latent_cache_dir: str | Path | None = None) -> TrainResult:
    """Train the vectors of `embedding:<cfg.output_name>`; files land in output_dir (the
    embeddings folder) as <output_name>.safetensors (and the step/epoch saves with their states).
    Sample prompts may use the token string or `embedding:<output_name>`."""
    family = trainable_family(model)
    if family not in ("sd15", "sd2", "sdxl"):
        raise ValueError(f"Textual Inversion training supports SD1.x, SD2.x and SDXL models; this one is {family}")
    with torch.inference_mode(False):  # parameters made in a graph must not be inference tensors
        adapter = TextualInversionAdapter(start_vectors(clip, options, cfg.seed), family, options.token_string)
    name = cfg.output_name

    def metadata(facts: dict) -> dict[str, str]:
        return {**training_metadata(facts), **base_model_metadata(family)}

    text_options = {"embeddings": adapter.embeddings(name),
                    "rewrite": caption_rewrite(options.token_string, name, options.templates)}
    return run_training(cfg, model, clip, vae, datasets, lambda tm: adapter, metadata, output_dir=output_dir,
                        model_name=model_name, hooks=hooks, latent_cache_dir=latent_cache_dir,
                        trains_text_encoders=True, text_options=text_options)
