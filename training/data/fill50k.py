"""lllyasviel's Fill50K layout, read as it is: `prompt.json` with one JSON object per line,
{"source": "source/0.png", "target": "target/0.png", "prompt": "..."}, paths relative to the
folder. The target is the training image, the source its guide. Every problem (bad lines,
missing or unreadable files, guides of another size) is listed in one DatasetError.

    subset = subset_from_fill50k("/data/fill50k", template=SubsetConfig(num_repeats=1))
"""
import dataclasses
import json
from pathlib import Path

from .config import SubsetConfig
from .errors import MISSING_PATH, DatasetProblems, Problem
from .images import ImageItem, read_sizes
from .pairing import check_guide_sizes

BAD_LINES = Problem("Lines of prompt.json that are not {\"source\", \"target\", \"prompt\"} JSON objects",
                    "fix or delete these lines (one JSON object per line)")
MISSING_FILES = Problem("Files named in prompt.json that do not exist", "add the file, or delete its line from prompt.json")


def subset_from_fill50k(root: str | Path, template: SubsetConfig | None = None) -> SubsetConfig:
    root = Path(root)
    problems = DatasetProblems()
    index = root / "prompt.json"
    if not index.is_file():
        problems.add(MISSING_PATH, index, "Fill50K index: one {\"source\", \"target\", \"prompt\"} JSON object per line")
        problems.raise_if_any()
    rows = []
    for n, line in enumerate(index.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            ok = isinstance(row, dict) and all(isinstance(row.get(k), str) for k in ("source", "target", "prompt"))
        except json.JSONDecodeError:
            ok = False
        if not ok:
            problems.add(BAD_LINES, f"{index}:{n}", line[:80])
            continue
        target, source = root / row["target"], root / row["source"]
        missing = [p for p in (target, source) if not p.is_file()]
        for p in missing:
            problems.add(MISSING_FILES, p, f"line {n}")
        if not missing:
            rows.append((target, source, row["prompt"]))
    sizes = read_sizes([t for t, _, _ in rows], problems)
    items = [ImageItem(name=str(t), source=t, size=sizes[t], caption=prompt, guide=s) for t, s, prompt in rows if t in sizes]
    check_guide_sizes(items, problems)
    problems.raise_if_any()
    return dataclasses.replace(template or SubsetConfig(), items=items)
