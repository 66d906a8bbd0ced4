"""Atomic file writes: every writer (LoRA, LLLite, training state, images, caches) writes a
temporary file with a unique name beside the target, fsyncs it and renames it over the target,
so a crash, a kill or a full disk leaves either the old file or the new one, never half of one."""
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import user_error


@user_error
class WriteFailed(OSError):
    """A file could not be written; the previous file at that path is unchanged."""


@contextmanager
def atomic_path(path: str | Path, what: str = "file") -> Iterator[Path]:
    """Yields a temporary path beside `path` to write to; on success it is fsynced and renamed
    over `path`, on any error it is removed and `path` keeps its previous content."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        tmp = Path(tmp)
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException as e:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, WriteFailed):
            kept = "the previous file there is unchanged" if path.exists() else "nothing was written"
            raise WriteFailed(e.errno, f"could not write {what} {path}: {e.strerror or e}; {kept}.\n"
                                       "Free disk space (or raise the file size limit) and run again.") from e
        raise


def write_atomic(path: str | Path, data: bytes | Callable[[Path], None], what: str = "file") -> Path:
    """Writes `data` (bytes, or a function that writes the given temporary path) to `path` atomically."""
    with atomic_path(path, what) as tmp:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as f:
                f.write(data)
    return Path(path)


def _fsync_dir(folder: Path) -> None:
    """The rename itself survives a power cut only once the folder is synced (POSIX)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return  # Windows cannot open folders; its rename is durable enough
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
