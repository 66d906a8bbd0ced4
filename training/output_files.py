"""What a run does when its output name is taken: never overwrite a user's file by surprise.

"new name" (the default) writes `name_2`, `name_3` ... (the first free one); "resume" continues
the run from its newest state file; "overwrite" replaces the earlier files, by explicit choice."""
from pathlib import Path

from .state import latest_state, run_states

IF_EXISTS = ("new name", "resume", "overwrite")


def _taken(out_dir: Path, name: str) -> bool:
    return (out_dir / f"{name}.safetensors").exists() or bool(run_states(out_dir, name))


def plan_output(out_dir: str | Path, name: str, if_exists: str) -> tuple[str, Path | None]:
    """(output name to write, state file to resume from or None)."""
    if if_exists not in IF_EXISTS:
        raise ValueError(f"if_exists must be one of {', '.join(IF_EXISTS)}, not {if_exists!r}")
    out_dir = Path(out_dir)
    if not _taken(out_dir, name) or if_exists == "overwrite":
        return name, None
    if if_exists == "resume":
        state = latest_state(out_dir, name)
        if state is None:
            raise FileExistsError(
                f"{out_dir / name}.safetensors exists but has no training state to resume from (states are written "
                "next to each save when save_state is on). Choose if_exists = new name to keep it and train another, "
                "or overwrite to replace it.")
        return name, state
    n = 2
    while _taken(out_dir, f"{name}_{n}"):
        n += 1
    return f"{name}_{n}", None
