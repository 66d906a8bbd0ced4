"""Test set-up: real ComfyUI 0.30.0 on sys.path, the pack importable as `lllite_kit`,
tiny models, model/output folders redirected to a temporary directory."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from paths import COMFYUI_DIR, REPO  # noqa: E402

if not (COMFYUI_DIR / "main.py").is_file():
    raise pytest.UsageError(f"No ComfyUI tree at {COMFYUI_DIR}: run the tests with `bash scripts/test.sh` (it sets one up).")

# The checkout itself must not be importable by path: its nodes/ would shadow ComfyUI's nodes.
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != REPO]
sys.path.insert(0, str(COMFYUI_DIR))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "tests" / "tiny_nodes"))

import torch  # noqa: E402

from comfy.cli_args import args  # noqa: E402

# Must happen before comfy.model_management is imported anywhere.
args.cpu = os.environ.get("LLLITE_KIT_TEST_GPU") != "1" or not torch.cuda.is_available()
torch.use_deterministic_algorithms(False)
# Under pytest-xdist (scripts/test.sh runs two workers; LLLITE_KIT_TEST_WORKERS=N) each worker gets its share of the
# cores: torch's default of every core per process would oversubscribe them.
_workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _workers > 1:
    _cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    torch.set_num_threads(max(1, _cores // _workers))


def _import_pack_as(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "__init__.py", submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


import comfy.model_management  # noqa: E402,F401
import folder_paths  # noqa: E402

lllite_kit = _import_pack_as("lllite_kit")


@pytest.fixture(scope="session")
def comfy_dirs(tmp_path_factory):
    """Redirect ComfyUI's models/output/input/temp folders to a throw-away directory."""
    root = tmp_path_factory.mktemp("comfy")
    for sub in ("output", "input", "temp"):
        (root / sub).mkdir()
    folder_paths.set_output_directory(str(root / "output"))
    folder_paths.set_input_directory(str(root / "input"))
    folder_paths.set_temp_directory(str(root / "temp"))
    models = root / "models"
    for name in ("checkpoints", "loras", "controlnet", "lllite", "preprocessors"):
        (models / name).mkdir(parents=True)
        folder_paths.add_model_folder_path(name, str(models / name), is_default=True)
    return root


@pytest.fixture(scope="session")
def graph(comfy_dirs):
    """Runs API-format graphs through ComfyUI's own executor (see graph_runner.py)."""
    from graph_runner import GraphRunner

    return GraphRunner.instance()


@pytest.fixture(scope="session")
def tiny():
    import tiny_models

    return tiny_models
