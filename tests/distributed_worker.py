"""One process of a torchrun job in the tests: scripts/train.py's own main, with the tiny
SD1.5 model in place of a checkpoint file (a real one is 300 MB per process)."""
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import train as cli  # noqa: E402

cli.bootstrap_comfyui()
sys.path.insert(0, str(REPO / "tests" / "tiny_nodes"))
import tiny_models  # noqa: E402

cli.load_models = lambda cfg: (*tiny_models.build_checkpoint("sd15", 0), "tiny.safetensors")
sys.exit(cli.main(sys.argv[1:]))
