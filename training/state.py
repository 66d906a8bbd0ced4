"""The resumable training state file: everything a run needs to continue as if it had never
stopped (adapter weights at full precision, optimizer, scheduler, loss scaler, step counters,
random generators, data order, loss history). Written atomically next to the saved weights.

Read with torch.load(weights_only=True): tensors, numbers, strings and containers only, so a
state file someone else placed in the folder cannot run code when a graph resumes from it."""
import pickle
import re
from pathlib import Path

import torch

from ..errors import user_error
from ..files.atomic import write_atomic

STATE_VERSION = 1
STATE_SUFFIX = "-state.pt"
# <name>-state.pt (final), <name>-step00000010-state.pt (step saves), <name>-000002-state.pt (epoch saves)
_SAVE_TAG = r"(?:-step\d{8}|-\d{6})?"


@user_error
class UnsafeStateFile(ValueError):
    pass


def state_path_for(weights_path: str | Path) -> Path:
    """`out/name-000010.safetensors` -> `out/name-000010-state.pt`."""
    p = Path(weights_path)
    return p.with_name(p.stem + STATE_SUFFIX)


def save_state(path: str | Path, state: dict) -> Path:
    return write_atomic(path, lambda tmp: torch.save({"version": STATE_VERSION, **state}, tmp), "training state")


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path} (written next to each saved file when save_state is on)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeStateFile(
            f"{path}: refused: it holds Python objects other than tensors, numbers and strings, which could run code "
            "when loaded. Training states this pack writes never do; delete the file if you did not make it.") from e
    except Exception as e:
        raise ValueError(f"{path}: not a readable training state ({e})") from e
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a training state of this version (expected version {STATE_VERSION})")
    return state


def run_states(directory: str | Path, output_name: str) -> list[Path]:
    """The state files of the run named `output_name` in `directory` (not those of
    `output_name-v2` or of names that merely match as a pattern), oldest first."""
    folder = Path(directory) / Path(output_name).parent
    if not folder.is_dir():
        return []
    own = re.compile(re.escape(Path(output_name).name) + _SAVE_TAG + re.escape(STATE_SUFFIX))
    return sorted((p for p in folder.iterdir() if own.fullmatch(p.name) and p.is_file()), key=lambda p: p.stat().st_mtime_ns)


def latest_state(directory: str | Path, output_name: str) -> Path | None:
    """The most recently written state file of the run `output_name` in `directory`, or None."""
    states = run_states(directory, output_name)
    return states[-1] if states else None
