"""Regenerate the example workflows ComfyUI's template browser shows, from their sources.

    example_workflows/api/<key>.json    the graph, API format (what runs)
    example_workflows/api/<key>.toml    title, description, groups with their Notes (layout)
 -> example_workflows/<title>.json      UI format, laid out (workflow_layout.py)
 -> example_workflows/<title>.jpg       thumbnail, with --thumbnails (workflow_thumbnails.py:
                                        runs each graph on the tiny test models)

ComfyUI 0.30.0's frontend (1.47) lists a pack's templates by file name only: the title is
the file name and the description the same name with '-' and '_' as spaces; the thumbnail
is <name>.jpg beside it. Hence readable file names, taken from the title.

Run: .venv/bin/python scripts/build_workflows.py [--thumbnails]
"""
import asyncio
import json
import logging
import os
import re
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
EXAMPLES = REPO / "example_workflows"
SOURCES = EXAMPLES / "api"
sys.path[:0] = [str(COMFYUI_DIR), str(REPO / "scripts")]

from comfy.cli_args import args  # noqa: E402

args.cpu = True
import nodes  # noqa: E402

from workflow_format import api_to_ui  # noqa: E402
from workflow_layout import apply_layout  # noqa: E402

# Characters a template name may hold: the frontend puts it into URLs unescaped.
_SAFE_TITLE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ,()-]*")


def load_node_definitions() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # core extras warn about the absent server; irrelevant here
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(REPO))):
        sys.exit("the pack failed to load; see the log above")


def source_keys() -> list[str]:
    return [p.stem for p in sorted(SOURCES.glob("*.json"))]


def read_layout(key: str) -> dict:
    """Title, description and groups of a workflow; the title is also its file name."""
    path = SOURCES / f"{key}.toml"
    if not path.exists():
        raise FileNotFoundError(f"{path.relative_to(REPO)} missing: declare the workflow's title, description and "
                                "groups there (see scripts/workflow_layout.py)")
    layout = tomllib.loads(path.read_text(encoding="utf-8"))
    for field in ("title", "description", "groups"):
        if not layout.get(field):
            raise ValueError(f"{path.name}: '{field}' is required")
    if not _SAFE_TITLE.fullmatch(layout["title"]):
        raise ValueError(f"{path.name}: title {layout['title']!r} must use letters, digits, spaces and ,()- only")
    return layout


def ui_path(key: str) -> Path:
    return EXAMPLES / f"{read_layout(key)['title']}.json"


def build(key: str) -> dict:
    prompt = json.loads((SOURCES / f"{key}.json").read_text(encoding="utf-8"))
    return apply_layout(api_to_ui(prompt), list(prompt), read_layout(key))


def _remove_stale(keep: set[Path]) -> None:
    for path in [*EXAMPLES.glob("*.json"), *EXAMPLES.glob("*.jpg")]:
        if path not in keep:
            path.unlink()
            print("removed", path.relative_to(REPO))


def main() -> None:
    load_node_definitions()
    keep = set()
    for key in source_keys():
        out = ui_path(key)
        out.write_text(json.dumps(build(key), indent=2) + "\n", encoding="utf-8")
        keep.update((out, out.with_suffix(".jpg")))
        print("wrote", out.relative_to(REPO))
    _remove_stale(keep)
    if "--thumbnails" in sys.argv[1:]:
        from workflow_thumbnails import write_thumbnails

        write_thumbnails({key: ui_path(key) for key in source_keys()})


if __name__ == "__main__":
    main()
