"""Where the checkout and ComfyUI are (tests import these; never the conftest module)."""
import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMFYUI_DIR = Path(os.environ.get("COMFYUI_DIR") or REPO / ".comfyui" / "ComfyUI").resolve()
