"""Run scripts/train.py as a separate torchrun job and follow it from this process: its JSON
progress lines (--progress_json) drive the caller's TrainHooks (progress bar, phase text,
sample previews), the caller's Cancel becomes the job's stop file (every process stops at the
same step), and the job's end gives the saved files. ComfyUI itself is never started again:
the workers import only ComfyUI's model code (scripts/train.py), not its server."""
from __future__ import annotations

import json
import logging
import os
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import user_error
from .engine import TrainHooks

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[1]
TRAIN_SCRIPT = REPO / "scripts" / "train.py"
PREFIX = "lllite-kit "


@user_error
class DistributedJobFailed(RuntimeError):
    pass


def torchrun_command(program: Path, args: list[str], processes: int, nodes: int = 1, node_rank: int = 0,
                     rendezvous: str = "") -> list[str]:
    """torchrun (python -m torch.distributed.run) for `processes` per machine; one machine uses
    a private rendezvous on a free port, several meet at `rendezvous` (host:port)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={processes}"]
    if nodes > 1:
        if not rendezvous:
            raise ValueError("several machines need a rendezvous address host:port (the same on every machine)")
        cmd += [f"--nnodes={nodes}", f"--node_rank={node_rank}", f"--master_addr={rendezvous.rsplit(':', 1)[0]}",
                f"--master_port={rendezvous.rsplit(':', 1)[1]}"]
    else:
        cmd.append("--standalone")
    return [*cmd, str(program), *args]


def read_png(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        return torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0)[None]


def follow_job(command: list[str], stop_file: Path, hooks: TrainHooks, env: dict | None = None,
               stop_grace_s: float = 300.0) -> dict:
    """Run `command` (a train.py job with --progress_json --stop_file stop_file) to its end.
    Returns its "done" event (final, saved, losses, curve, samples: the last round's files). A Cancel (hooks.check_interrupt
    raising) creates the stop file, waits for the processes to stop together (they keep every
    file saved so far), and re-raises; after stop_grace_s they are terminated."""
    stop_file.unlink(missing_ok=True)
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1,
                            env={**os.environ, **(env or {})})
    lines: queue.Queue = queue.Queue()
    errors: list[str] = []
    threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] and None, daemon=True).start()
    threading.Thread(target=lambda: [errors.append(line) for line in proc.stderr] and None, daemon=True).start()
    done = None
    cancelled: BaseException | None = None
    stop_asked = 0.0
    while True:
        try:
            line = lines.get(timeout=0.2)
        except queue.Empty:
            line = None
        if line is not None:
            done = _handle(line, hooks) or done
        elif proc.poll() is not None and lines.empty():
            break
        if cancelled is None and hooks.check_interrupt is not None:
            try:
                hooks.check_interrupt()
            except BaseException as e:  # ComfyUI's Cancel: ask the job to stop at its next step
                cancelled, stop_asked = e, time.monotonic()
                stop_file.write_text("cancelled from ComfyUI\n", encoding="utf-8")
                if hooks.phase:
                    hooks.phase("stopping every process at the next step")
        if cancelled is not None and proc.poll() is None and time.monotonic() - stop_asked > stop_grace_s:
            proc.terminate()
    proc.wait()
    stop_file.unlink(missing_ok=True)
    if cancelled is not None:
        raise cancelled
    if proc.returncode != 0 or done is None:
        tail = "".join(errors[-20:]).strip()
        raise DistributedJobFailed(f"the torchrun job exited with status {proc.returncode}. Its last messages:\n{tail}")
    return done


def _handle(line: str, hooks: TrainHooks) -> dict | None:
    if not line.startswith(PREFIX):
        log.info("train job: %s", line.rstrip())
        return None
    event = json.loads(line[len(PREFIX):])
    kind = event["kind"]
    if kind == "progress" and hooks.progress:
        hooks.progress(event["step"], event["total"], event["loss"])
    elif kind == "phase" and hooks.phase:
        hooks.phase(event["text"])
    elif kind == "samples" and hooks.samples:
        hooks.samples(event["step"], [read_png(f) for f in event["files"]])
    elif kind == "done":
        return event
    return None
