"""Caption and tag cleaning with sd-scripts' rules (finetune/clean_captions_and_tags.py,
Apache-2.0, reimplemented here with the same rules and order), and the small edits users make
by hand: find/replace, prefix/suffix, duplicate tags, tags moved to the front."""
import re

# In a group picture ("girls"/"boys" among the tags) per-person attributes that appear more
# than once cannot be told apart, so all of them are dropped.
_HAIR_LENGTH = re.compile(r", (long|short|medium) hair, ")
_HAIR_CUT = re.compile(r", (bob|hime) cut, ")
_HAIR = re.compile(r", ([\w\-]+) hair, ")
_WORD = re.compile(r", ([\w\-]+|hair ornament), ")
_MULTI_PERSON_ATTRIBUTES = [
    _HAIR_LENGTH,
    _HAIR_CUT,
    re.compile(r", [\w\-]+ eyes, "),
    re.compile(r", ([\w\-]+ sleeves|sleeveless), "),
    re.compile(r", (ponytail|braid|ahoge|twintails|[\w\-]+ bun|single hair bun|single side bun|two side up"
               r"|two tails|[\w\-]+ braid|sidelocks), "),
]
_KEEP = "\x00"  # placeholder that no tag contains

# Applied top to bottom, each until the caption stops changing: BLIP's many words for a
# drawn person become "girl"/"girls", "cartoon"/"anime" descriptors are dropped.
CAPTION_REPLACEMENTS = [
    ("anime anime", "anime"), ("young ", ""), ("anime girl", "girl"), ("cartoon female", "girl"),
    ("cartoon lady", "girl"), ("cartoon character", "girl"), ("cartoon woman", "girl"),
    ("cartoon women", "girls"), ("cartoon girl", "girl"), ("anime female", "girl"), ("anime lady", "girl"),
    ("anime character", "girl"), ("anime woman", "girl"), ("anime women", "girls"), ("lady", "girl"),
    ("female", "girl"), ("woman", "girl"), ("women", "girls"), ("people", "girls"), ("person", "girl"),
    ("a cartoon figure", "a figure"), ("a cartoon image", "an image"), ("a cartoon picture", "a picture"),
    ("an anime cartoon image", "an image"), ("a cartoon anime drawing", "a drawing"),
    ("a cartoon drawing", "a drawing"), ("girl girl", "girl"),
]


def clean_caption(caption: str) -> str:
    for old, new in CAPTION_REPLACEMENTS:
        while old in caption:
            before = caption
            caption = caption.replace(old, new)
            if caption == before:
                break
    return caption


def clean_tags(tags: str) -> str:
    """sd-scripts' clean_tags: underscores to spaces (except "^_^"), a trailing DeepDanbooru
    rating dropped, per-person attributes of group pictures dropped, a tag dropped when a
    longer tag ends with it ("shirt" beside "white shirt")."""
    tags = tags.replace("^_^", _KEEP).replace("_", " ").replace(_KEEP, "^_^")
    tags = tags.split(", rating")[0]
    # Every tag wrapped as ", tag, " (the separators doubled) so one regex matches any tag.
    tags = ", " + tags.replace(", ", ", , ") + ", "
    if "girls" in tags or "boys" in tags:
        for pattern in _MULTI_PERSON_ATTRIBUTES:
            if len(pattern.findall(tags)) > 1:
                tags = pattern.sub("", tags)
        # One shared hair length may stay while several hair colours go.
        length = _HAIR_LENGTH.search(tags)
        if length:
            tags = _HAIR_LENGTH.sub(", @@@, ", tags)
        if len(_HAIR.findall(tags)) > 1:
            tags = _HAIR.sub("", tags)
        if length:
            tags = tags.replace(", @@@, ", length.group())
    for word in _WORD.findall(tags):
        if re.search(f", ((\\w+) )+{word}, ", tags):
            tags = tags.replace(f", {word}, ", "")
    tags = tags.replace(", , ", ", ")
    return tags[2:-2]


def clean_metadata(metadata: dict) -> dict:
    """clean_captions_and_tags.py on a metadata dict: every entry's tags and caption cleaned
    (entries without them are left as they are). Returns a new dict."""
    cleaned = {}
    for key, entry in metadata.items():
        entry = dict(entry)
        if entry.get("tags") is not None:
            entry["tags"] = clean_tags(entry["tags"])
        if entry.get("caption") is not None:
            entry["caption"] = clean_caption(entry["caption"])
        cleaned[key] = entry
    return cleaned


def edit_caption(text: str, find: str = "", replace: str = "", prefix: str = "", suffix: str = "",
                 dedupe: bool = False, first: list[str] | None = None, separator: str = ", ") -> str:
    """Hand edits in a fixed order: find -> replace (plain text), duplicate tags removed (the
    first one kept), the `first` tags moved to the front in the given order (those present),
    then prefix and suffix added as tags (unless already first/last). A kept-token separator such as "|||" in the text is a
    tag of its own here, so it stays where it is relative to the tags around it."""
    if find:
        text = text.replace(find, replace)
    sep = separator.strip() or separator
    tags = [t.strip() for t in text.split(sep) if t.strip()]
    if dedupe:
        tags = list(dict.fromkeys(tags))
    for tag in reversed(first or []):
        if tag in tags:
            tags.remove(tag)
            tags.insert(0, tag)
    # A prefix/suffix already in place is not added again, so running the edit twice is harmless.
    if prefix.strip() and tags[:1] != [prefix.strip()]:
        tags.insert(0, prefix.strip())
    if suffix.strip() and tags[-1:] != [suffix.strip()]:
        tags.append(suffix.strip())
    return separator.join(tags)
