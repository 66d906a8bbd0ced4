"""Caption operations: class-token fallback, prefix/suffix, shuffle with kept tokens, dropouts."""
import random
from collections import Counter

from lllite_kit.training.data import SubsetConfig
from lllite_kit.training.data.captions import base_caption, process_caption

CAPTION = "sks dog, red collar, grass, sunny, outdoors, running"


def _many(subset, n=400, caption=CAPTION, epoch=1):
    rng = random.Random(0)
    return [process_caption(caption, subset, rng, epoch) for _ in range(n)]


def test_class_tokens_are_the_fallback():
    subset = SubsetConfig(class_tokens="sks dog")
    assert base_caption(None, subset) == "sks dog"
    assert base_caption("a photo", subset) == "a photo"


def test_plain_caption_is_untouched_and_prefix_suffix_added():
    assert _many(SubsetConfig(), 3) == [CAPTION] * 3
    s = SubsetConfig(caption_prefix="masterpiece,", caption_suffix=", best")
    assert process_caption("a cat", s, None) == "masterpiece, a cat , best"


def test_shuffle_keeps_leading_tokens_and_the_tag_set():
    subset = SubsetConfig(shuffle_caption=True, keep_tokens=2)
    out = _many(subset)
    tags = CAPTION.split(", ")
    for c in out:
        parts = c.split(", ")
        assert parts[:2] == tags[:2] and sorted(parts) == sorted(tags)
    assert len(set(out)) > 10  # 4! orders of the flexible tags
    assert process_caption(CAPTION, subset, None) == CAPTION  # no randomness: unchanged


def test_keep_tokens_separator_wins_over_the_count():
    subset = SubsetConfig(shuffle_caption=True, keep_tokens=5, keep_tokens_separator="|||")
    caption = "sks dog, 1girl ||| red, blue, green, yellow"
    out = _many(subset, caption=caption)
    assert all(c.startswith("sks dog, 1girl, ") and "|||" not in c for c in out)
    assert {frozenset(c.split(", ")[2:]) for c in out} == {frozenset(["red", "blue", "green", "yellow"])}
    assert len(set(out)) > 5
    assert process_caption(caption, subset, None) == "sks dog, 1girl, red, blue, green, yellow"


def test_caption_dropout_rate():
    out = _many(SubsetConfig(caption_dropout_rate=0.25), n=2000)
    empty = sum(c == "" for c in out) / len(out)
    assert 0.2 < empty < 0.3 and set(out) == {"", CAPTION}


def test_caption_dropout_every_n_epochs():
    subset = SubsetConfig(caption_dropout_every_n_epochs=2)
    assert set(_many(subset, 5, epoch=1)) == {CAPTION}
    assert set(_many(subset, 5, epoch=2)) == {""}
    assert set(_many(subset, 5, epoch=3)) == {CAPTION}


def test_tag_dropout_never_drops_kept_tokens():
    subset = SubsetConfig(caption_tag_dropout_rate=0.5, keep_tokens=1)
    out = _many(subset, n=2000)
    counts = Counter(t for c in out for t in c.split(", "))
    assert counts["sks dog"] == 2000
    for tag in ["red collar", "grass", "sunny", "outdoors", "running"]:
        assert 0.4 < counts[tag] / 2000 < 0.6
