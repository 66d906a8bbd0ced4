"""Sample prompts in sd-scripts' line format (seed 003): one prompt per line, `#` starts a
comment line, options `--n` (negative prompt, up to the next option), `--w` `--h` (size),
`--d` (seed), `--l` (CFG scale), `--s` (steps), `--ss` (sampler of this prompt). sd-scripts'
other options, and unknown ones, are errors naming the option (sd-scripts ignores them)."""
import re
from dataclasses import dataclass
from pathlib import Path


@dataclass
class SamplePrompt:
    prompt: str
    negative: str = ""
    width: int = 512
    height: int = 512
    seed: int | None = None  # None: derived from the training seed and the prompt's index
    cfg: float = 7.5
    steps: int = 20
    sampler: str | None = None  # --ss; None: the run's sample_sampler


_OPTION = re.compile(r"\s--([A-Za-z]+)\s*")
# sd-scripts options that do not apply to what this trainer samples
_REFUSED_OPTIONS = {
    "cn": "--cn gives a ControlNet guide image, and samples here run without a ControlNet (LLLite samples take "
          "the node's sample_guide image)",
    "g": "--g is the guidance of guidance-distilled models (FLUX); for SD U-Nets --l sets the CFG scale",
    "ctr": "--ctr (CFG truncation) is for Lumina models",
    "rcfg": "--rcfg (renormalized CFG) is for Lumina models",
    "fs": "--fs (flow shift) is for flow-matching models",
}
_NUMBERS = {"w": ("width", int), "h": ("height", int), "d": ("seed", int), "l": ("cfg", float), "s": ("steps", int)}
_OPTIONS = "--n, --w, --h, --d, --l, --s, --ss"


def parse_prompt_line(line: str, default_size: int = 512) -> SamplePrompt | None:
    """One line -> SamplePrompt; None for blank and comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = _OPTION.split(" " + line)
    sample = SamplePrompt(prompt=parts[0].strip(), width=default_size, height=default_size)
    for flag, value in zip(parts[1::2], parts[2::2]):
        value, flag = value.strip(), flag.lower()  # sd-scripts reads options case-insensitively
        if flag in _REFUSED_OPTIONS:
            raise ValueError(f"sample prompt {line!r}: {_REFUSED_OPTIONS[flag]}")
        if flag == "n":
            sample.negative = value
        elif flag == "ss":
            if not value:
                raise ValueError(f"sample prompt {line!r}: --ss needs a sampler name")
            sample.sampler = value  # checked against the samplers that exist when sampling is set up
        elif flag in _NUMBERS:
            name, kind = _NUMBERS[flag]
            try:
                setattr(sample, name, kind(value))
            except ValueError:
                raise ValueError(f"sample prompt {line!r}: --{flag} needs a number, got {value!r}") from None
        else:
            raise ValueError(f"sample prompt {line!r}: unknown option --{flag} (options: {_OPTIONS})")
    for name in ("width", "height"):
        v = getattr(sample, name)
        if v < 8 or v % 8:
            raise ValueError(f"sample prompt {line!r}: {name} {v} must be a positive multiple of 8")
    return sample


def parse_prompts(text_or_path: str | None, default_size: int = 512) -> list[SamplePrompt]:
    """Prompt lines from a file path or from the text itself."""
    if not text_or_path or not text_or_path.strip():
        return []
    text = text_or_path
    if "\n" not in text_or_path and len(text_or_path) < 4096:
        path = Path(text_or_path)
        if path.suffix.lower() in (".txt", ".toml", ".json") and not path.is_file():
            raise FileNotFoundError(f"sample prompts file not found: {path}")
        if path.is_file():
            text = path.read_text(encoding="utf-8")
    prompts = [parse_prompt_line(line, default_size) for line in text.splitlines()]
    return [p for p in prompts if p is not None]
