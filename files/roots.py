"""The folders a graph may write to and read from (ComfyUI's folders via folder_paths).

Writes: only inside ComfyUI's model folders, output and temp. Reads of user-typed paths
(datasets, prompt files): anywhere while ComfyUI listens on loopback only (the user is the
one at the keyboard), but when it listens on another address, only ComfyUI's own folders and
the roots the machine's owner lists in READ_ROOTS_FILE (one absolute path per line, `#`
comments) inside the ComfyUI folder: a file the HTTP API cannot write.
"""
import ipaddress
from pathlib import Path

from ..errors import user_error
from .names import inside

READ_ROOTS_FILE = "lllite_kit_read_roots.txt"


@user_error
class PathNotAllowed(PermissionError):
    pass


def _comfy_folders() -> list[Path]:
    import folder_paths

    folders = [folder_paths.get_output_directory(), folder_paths.get_temp_directory(), folder_paths.models_dir]
    for paths, _ in folder_paths.folder_names_and_paths.values():
        folders += paths
    return [Path(f) for f in folders]


def check_writable(folder: str | Path, what: str = "output_dir") -> Path:
    """`folder` if it lies inside ComfyUI's model folders, output or temp; else PathNotAllowed."""
    folder = Path(folder).expanduser()
    if any(inside(folder, root) for root in _comfy_folders()):
        return folder
    raise PathNotAllowed(f"{what} {str(folder)!r} is outside ComfyUI's model, output and temp folders, where graphs write.\n"
                         "Use a folder inside ComfyUI's models or output folder.")


def _loopback_only() -> bool:
    from comfy.cli_args import args

    for host in (h.strip() for h in (args.listen or "127.0.0.1").split(",")):
        if host == "localhost":
            continue
        try:
            if not ipaddress.ip_address(host.strip("[]")).is_loopback:
                return False
        except ValueError:
            return False  # a host name other than localhost: reachable from elsewhere
    return True


def read_roots() -> list[Path]:
    """ComfyUI's input, output, temp and model folders, and the roots listed in READ_ROOTS_FILE."""
    import folder_paths

    roots = [Path(folder_paths.get_input_directory()), *_comfy_folders()]
    listed = Path(folder_paths.base_path) / READ_ROOTS_FILE
    if listed.is_file():
        for line in listed.read_text(encoding="utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if line:
                roots.append(Path(line).expanduser())
    return roots


def check_readable(path: str | Path, what: str) -> Path:
    """`path` if a graph may read it (see module doc); else PathNotAllowed naming the rule."""
    path = Path(path)
    if _loopback_only() or any(inside(path, root) for root in read_roots()):
        return path
    import folder_paths

    raise PathNotAllowed(
        f"{what} {str(path)!r} is outside ComfyUI's folders, and ComfyUI listens on a network address.\n"
        f"Move the data into ComfyUI's input folder, or list its folder in {Path(folder_paths.base_path) / READ_ROOTS_FILE} "
        "(one absolute path per line): graphs on a network-facing ComfyUI read only ComfyUI's folders and those.")
