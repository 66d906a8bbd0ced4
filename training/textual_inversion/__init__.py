"""Textual Inversion: new token vectors trained on the one engine, saved as ComfyUI / A1111 /
sd-scripts embedding files (models/embeddings, used as `embedding:name` in a prompt)."""
from .adapter import TextualInversionAdapter
from .captions import caption_rewrite, embedding_word
from .embedding import file_tensors, initial_vectors, load_embedding, save_embedding
from .templates import OBJECT_TEMPLATES, STYLE_TEMPLATES, TEMPLATES
from .train import TextualInversionOptions, start_vectors, train_textual_inversion

__all__ = ["OBJECT_TEMPLATES", "STYLE_TEMPLATES", "TEMPLATES", "TextualInversionAdapter", "TextualInversionOptions",
           "caption_rewrite", "embedding_word", "file_tensors", "initial_vectors", "load_embedding", "save_embedding",
           "start_vectors", "train_textual_inversion"]
