"""Sample prompts in sd-scripts' line format (seed 003): one prompt per line, `#` starts a
comment line, options `--n` (negative prompt, up to the next option), `--w` `--h` (size),
`--d` (seed), `--l` (CFG scale), `--s` (steps)."""
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


_OPTION = re.compile(r"\s--([a-z]+)\s*")


def parse_prompt_line(line: str, default_size: int = 512) -> SamplePrompt | None:
    """One line -> SamplePrompt; None for blank and comment lines."""
    line = line.strip()
    if not line or line.startswith("#"):
        return None
    parts = _OPTION.split(" " + line)
    sample = SamplePrompt(prompt=parts[0].strip(), width=default_size, height=default_size)
    for flag, value in zip(parts[1::2], parts[2::2]):
        value = value.strip()
        try:
            if flag == "n":
                sample.negative = value
            elif flag == "w":
                sample.width = int(value)
            elif flag == "h":
                sample.height = int(value)
            elif flag == "d":
                sample.seed = int(value)
            elif flag == "l":
                sample.cfg = float(value)
            elif flag == "s":
                sample.steps = int(value)
            # other sd-scripts flags (--ss sampler, --cn ...) are not ours: ignored like unknown words
        except ValueError:
            raise ValueError(f"sample prompt {line!r}: --{flag} needs a number, got {value!r}") from None
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
