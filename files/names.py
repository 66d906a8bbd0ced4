"""The rule for output names a user types (output_name, subfolders allowed): a plain relative
name that cannot leave its folder. Checked before any work starts."""
import re
from pathlib import Path, PurePosixPath

from ..errors import user_error

RULE = ("a plain file name without extension, optionally in subfolders (e.g. `my_lora` or `people/my_lora`): "
        "no `..`, no absolute path, no drive letter, no backslash, no control characters, no part starting with a dot")
_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


@user_error
class BadName(ValueError):
    pass


def check_output_name(name: str, what: str = "output_name") -> str:
    """`name` if it follows RULE, else BadName naming the rule. Returns it with '/' separators."""
    problem = None
    if not isinstance(name, str) or not name.strip():
        problem = "it is empty"
    elif name != name.strip():
        problem = "it starts or ends with a space"
    elif _CONTROL.search(name):
        problem = "it holds a control character"
    elif "\\" in name:
        problem = "it holds a backslash"
    elif name.startswith("/") or _DRIVE.match(name):
        problem = "it is an absolute path"
    else:
        parts = PurePosixPath(name).parts
        if any(p == ".." for p in parts):
            problem = "it holds `..`"
        elif any(p.startswith(".") for p in parts) or name.endswith("/"):
            problem = "a part of it is hidden or empty"
    if problem:
        raise BadName(f"{what} {name!r} is not allowed: {problem}.\nUse {RULE}.")
    return name


def inside(path: str | Path, root: str | Path) -> bool:
    """Whether `path` (resolved, symlinks followed) lies inside `root`."""
    try:
        Path(path).resolve().relative_to(Path(root).resolve())
        return True
    except ValueError:
        return False
