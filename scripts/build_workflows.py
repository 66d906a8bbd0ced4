"""Regenerate example_workflows/<name>.json (UI format, for ComfyUI's template browser) from
the API-format sources in example_workflows/api/. Run: .venv/bin/python scripts/build_workflows.py"""
import asyncio
import json
import logging
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI")
sys.path[:0] = [str(COMFYUI_DIR), str(REPO / "scripts")]

from comfy.cli_args import args  # noqa: E402

args.cpu = True
import nodes  # noqa: E402

from workflow_format import api_to_ui  # noqa: E402


def load_node_definitions() -> None:
    logging.getLogger().setLevel(logging.ERROR)  # core extras warn about the absent server; irrelevant here
    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    if not asyncio.run(nodes.load_custom_node(str(REPO))):
        sys.exit("the pack failed to load; see the log above")


def build(name: str) -> dict:
    return api_to_ui(json.loads((REPO / "example_workflows" / "api" / f"{name}.json").read_text()))


def main() -> None:
    load_node_definitions()
    for src in sorted((REPO / "example_workflows" / "api").glob("*.json")):
        out = REPO / "example_workflows" / src.name
        out.write_text(json.dumps(build(src.stem), indent=2) + "\n")
        print("wrote", out.relative_to(REPO))


if __name__ == "__main__":
    main()
