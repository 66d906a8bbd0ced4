"""Captions and prompts as Textual Inversion trains them: the token string becomes
`embedding:<name>` (ComfyUI's prompt syntax, so training sees exactly what a prompt will), and
with a template set each caption is replaced by a random template first (sd-scripts'
add_replacement("", templates))."""
import logging
import re
from collections.abc import Callable

import torch

from .templates import TEMPLATES

log = logging.getLogger(__name__)


def embedding_word(name: str) -> str:
    return f"embedding:{name}"


def caption_rewrite(token_string: str, name: str, templates: str = "none") -> Callable[[str, bool], str]:
    """(text, is_prompt) -> text. The template is drawn from torch's global generator, which the
    engine's training state saves, so a resumed run draws the same templates."""
    if templates not in TEMPLATES:
        raise ValueError(f"templates must be one of {', '.join(TEMPLATES)}, not {templates!r}")
    choices = TEMPLATES[templates]
    word = embedding_word(name)
    # ComfyUI reads `embedding:` only at the start of the text or after white space
    token = re.compile(r"(^|\s)?" + re.escape(token_string))

    def to_embedding(text: str) -> str:
        return token.sub(lambda m: (m.group(1) if m.group(1) is not None else (" " if m.start() else "")) + word, text)

    warned = []

    def rewrite(text: str, prompts: bool) -> str:
        if choices and not prompts:
            text = choices[int(torch.randint(len(choices), ()))].format(token_string)
        elif not prompts and token_string not in text and not warned:
            warned.append(text)  # such a caption teaches the vectors nothing
            log.warning("caption %r does not contain the token string %r: use it in the captions (or a template)",
                        text, token_string)
        return to_embedding(text)

    return rewrite
