"""One process of the FSDP test (tests/test_fsdp.py): full-model training of the tiny SD1.5 model
through train_full_model, under torchrun (sharded with --fsdp) or alone; settings as
scripts/train.py reads them (config TOML, dataset TOML)."""
import argparse
import logging
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))
import train as cli  # noqa: E402

cli.bootstrap_comfyui()
sys.path.insert(0, str(REPO / "tests" / "tiny_nodes"))
import tiny_models  # noqa: E402

from lllite_kit.training import distributed, session  # noqa: E402
from lllite_kit.training.config import load_config  # noqa: E402
from lllite_kit.training.engine import TrainHooks  # noqa: E402
from lllite_kit.training.full_model import FullModelOptions, train_full_model  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--config_file", required=True)
    p.add_argument("--dataset_config", required=True)
    p.add_argument("--output_name", required=True)
    p.add_argument("--fsdp", action="store_true")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s", force=True)  # ComfyUI set its own
    distributed.join_from_environment()
    try:
        cfg = load_config(args.config_file, dataset_config=args.dataset_config, output_name=args.output_name)
        model, clip, vae = tiny_models.build_checkpoint("sd15", 0)
        train_full_model(cfg, model, clip, vae, session.datasets_from_config(cfg), FullModelOptions(fsdp=args.fsdp),
                         output_dir=cfg.output_dir, model_name="tiny.safetensors",
                         hooks=TrainHooks(progress=lambda step, total, loss: print(f"step {step}/{total}", flush=True),
                                          phase=lambda text: print(text, flush=True)))
    finally:
        distributed.leave()
    return 0


if __name__ == "__main__":
    sys.exit(main())
