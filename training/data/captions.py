"""Caption operations of sd-scripts: class-token fallback, prefix/suffix, whole-caption dropout,
tag shuffle with kept leading tokens (count or separator), tag dropout."""
import random

from .config import SubsetConfig


def base_caption(caption: str | None, subset: SubsetConfig) -> str | None:
    """The image's own caption (file, list, metadata) replaces the subset's class tokens."""
    return caption if caption is not None else subset.class_tokens


def process_caption(caption: str, subset: SubsetConfig, rng: random.Random | None, epoch: int = 1) -> str:
    """The caption one training step sees. rng=None gives the caption with every random
    operation off (held-out batches, text-encoder output caching). epoch counts from 1."""
    if subset.caption_prefix:
        caption = f"{subset.caption_prefix} {caption}"
    if subset.caption_suffix:
        caption = f"{caption} {subset.caption_suffix}"
    if rng is not None:
        every = subset.caption_dropout_every_n_epochs
        dropped = subset.caption_dropout_rate > 0 and rng.random() < subset.caption_dropout_rate
        if dropped or (every > 0 and epoch % every == 0):
            return ""
    sep = subset.keep_tokens_separator
    has_sep = bool(sep) and sep in caption
    random_tags = rng is not None and (subset.shuffle_caption or subset.caption_tag_dropout_rate > 0)
    if not (random_tags or has_sep):
        return caption
    fixed, flex = split_kept_tokens(caption, subset)
    if random_tags:
        if subset.shuffle_caption:
            rng.shuffle(flex)
        if subset.caption_tag_dropout_rate > 0:
            flex = [t for t in flex if rng.random() >= subset.caption_tag_dropout_rate]
    return ", ".join(fixed + flex)


def split_kept_tokens(caption: str, subset: SubsetConfig) -> tuple[list[str], list[str]]:
    """(kept tokens, shuffle/dropout-able tokens). The separator (e.g. "|||") wins over the
    keep_tokens count when the caption contains it."""
    sep, tag_sep = subset.keep_tokens_separator, subset.caption_separator
    if sep and sep in caption:
        fixed_part, flex_part = caption.split(sep, 1)
        return tags_of(fixed_part, tag_sep), tags_of(flex_part.replace(sep, tag_sep), tag_sep)
    tokens = tags_of(caption, tag_sep)
    k = subset.keep_tokens
    return tokens[:k], tokens[k:]


def tags_of(caption: str, separator: str = ",") -> list[str]:
    return [t.strip() for t in caption.split(separator) if t.strip()]
