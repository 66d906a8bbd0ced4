"""The one exception the data side raises for problems in the user's dataset, and the
collector that puts every problem of a run into one such error.

    problems = DatasetProblems()
    problems.add(EMPTY_CAPTION, path)     # each check adds what it finds and goes on
    ...
    problems.raise_if_any()               # one DatasetError: every group, its count, its names

Checks take `problems=None` and then raise their own findings at the end (see `collecting`),
so a single check called alone still raises.
"""
import logging
import os
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ...errors import user_error

log = logging.getLogger(__name__)


@user_error
class DatasetError(ValueError):
    """A dataset problem the user can fix; the message names the files, folders or keys."""


@dataclass(frozen=True)
class Problem:
    """One kind of dataset problem: its group title and what the user should do."""

    title: str
    advice: str


# Used by several checks (tree, image folders, guides, metadata).
MISSING_PATH = Problem("Folders and files that do not exist", "check the path, or create the folder")
UNREADABLE_IMAGES = Problem("Cannot read these images", "they are corrupt or not images: replace or delete them")


def name_list(names, limit: int = 20) -> str:
    """Bulleted list of names for an error message, cut after `limit` with a count of the rest."""
    names = [str(p) for p in names]
    shown = "\n".join(f"  - {n}" for n in names[:limit])
    if len(names) > limit:
        shown += f"\n  ... and {len(names) - limit} more"
    return shown


class DatasetProblems:
    """Every problem found in one pass over the dataset(s), grouped by kind, so the user
    fixes them all at once instead of meeting one per run. `shown` names per group."""

    def __init__(self, shown: int = 10):
        self.shown = shown
        self._groups: dict[Problem, dict[str, None]] = {}  # ordered, without duplicates
        self._paths: list[Path] = []
        self._notes: list[str] = []

    def add(self, kind: Problem, name: str | Path, detail: str = "", mentions: tuple[Path, ...] = ()) -> None:
        """One problem: `name` is the file, folder or entry; `detail` what is wrong with it,
        `mentions` the paths the detail names (so they are shortened like the names)."""
        self._paths += [p for p in (name, *mentions) if isinstance(p, Path)]
        self._groups.setdefault(kind, {})[f"{name} ({detail})" if detail else str(name)] = None

    def note(self, text: str) -> None:
        """Not a problem (training can go on), but worth saying; logged now and repeated
        under the problems if an error is raised."""
        log.warning("%s", text)
        self._notes.append(text)

    def __len__(self) -> int:
        return sum(len(entries) for entries in self._groups.values())

    def raise_if_any(self) -> None:
        if self._groups:
            raise DatasetError(self.message())

    def message(self) -> str:
        """First line: what is wrong (the only line some panels show); then each group as
        `Title (count): advice.` with its first names."""
        lines = []
        for kind, entries in self._groups.items():
            lines.append(f"{kind.title} ({len(entries)}): {kind.advice}.")
            lines.append(name_list(entries, self.shown))
        if len(self._groups) > 1:
            summary = "; ".join(f"{kind.title} ({len(entries)})" for kind, entries in self._groups.items())
            lines.insert(0, f"{len(self)} dataset problems in {len(self._groups)} groups: {summary}. Fix them all, then run again.")
        base = self._base()
        if base is not None:
            lines.insert(1, f"Paths below are relative to {base}")
        if self._notes:
            lines.append("Also noted (not errors):")
            lines.append(name_list(self._notes, self.shown))
        text = "\n".join(lines)
        # Absolute paths repeat one long prefix; stated once above, they read as names.
        return text.replace(f"{base}{os.sep}", "") if base is not None else text

    def _base(self) -> Path | None:
        """The deepest folder holding every named path, unless that is the filesystem root."""
        if not self._paths:
            return None
        try:
            base = Path(os.path.commonpath([str(p.parent) for p in self._paths]))
        except ValueError:  # different drives, or relative and absolute mixed
            return None
        return base if len(base.parts) > 1 else None


@contextmanager
def collecting(problems: DatasetProblems | None):
    """The caller's collector, or (for a check called on its own) a new one whose problems
    are raised when the block ends."""
    if problems is not None:
        yield problems
        return
    own = DatasetProblems()
    yield own
    own.raise_if_any()
