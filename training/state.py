"""The resumable training state file: everything a run needs to continue as if it had never
stopped (adapter weights at full precision, optimizer, scheduler, loss scaler, step counters,
random generators, data order, loss history). Written atomically next to the saved weights."""
import os
import tempfile
from pathlib import Path

import torch

STATE_VERSION = 1
STATE_SUFFIX = "-state.pt"


def state_path_for(weights_path: str | Path) -> Path:
    """`out/name-000010.safetensors` -> `out/name-000010-state.pt`."""
    p = Path(weights_path)
    return p.with_name(p.stem + STATE_SUFFIX)


def save_state(path: str | Path, state: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"version": STATE_VERSION, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_state(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"training state not found: {path} (written next to each saved file when save_state is on)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:
        raise ValueError(f"{path}: not a readable training state ({e})") from e
    if not isinstance(state, dict) or state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: not a training state of this version (expected version {STATE_VERSION})")
    return state


def latest_state(directory: str | Path, output_name: str) -> Path | None:
    """The most recently written state file of `output_name` in `directory`, or None."""
    directory = Path(directory)
    if not directory.is_dir():
        return None
    candidates = [p for p in directory.glob(f"{output_name}*{STATE_SUFFIX}")
                  if p.name == f"{output_name}{STATE_SUFFIX}" or p.name[len(output_name)] == "-"]
    return max(candidates, key=lambda p: p.stat().st_mtime_ns, default=None)
