"""scripts/train.py: an sd-scripts config TOML and dataset TOML train the same LoRA the node
would; bad input exits 1 with a message that names it."""
import subprocess
import sys

import numpy as np
import pytest
import safetensors
from PIL import Image

from conftest import COMFYUI_DIR, REPO

sys.path.insert(0, str(REPO / "scripts"))
import train as cli  # noqa: E402


def _dataset(root):
    folder = root / "imgs"
    folder.mkdir()
    for i in range(2):
        y, x = np.mgrid[0:64, 0:64]
        Image.fromarray(np.stack([x * 4 % 256, (y * (4 + i)) % 256, x * 0 + 128 * i], -1).astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks thing {i}", encoding="utf-8")
    toml = root / "dataset.toml"
    toml.write_text('[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
                    '[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeats = 1\n', encoding="utf-8")
    return toml


def _config(root, out):
    (root / "prompts.txt").write_text("# sample\nsks thing --w 64 --h 64 --s 2 --d 5\n", encoding="utf-8")
    config = root / "config.toml"
    config.write_text(f"""
[model_arguments]
pretrained_model_name_or_path = "tiny_sd15.safetensors"
[network_arguments]
network_dim = 4
network_alpha = 2
network_train_unet_only = true
[optimizer_arguments]
optimizer_type = "Lion"
learning_rate = 1e-4
lr_scheduler = "cosine"
[training_arguments]
output_dir = "{out.as_posix()}"
output_name = "cli_lora"
max_train_steps = 2
save_every_n_steps = 1
mixed_precision = "no"
cache_latents_to_disk = true
xformers = true
[sample_prompt_arguments]
sample_prompts = "{(root / 'prompts.txt').as_posix()}"
sample_every_n_steps = 2
sample_sampler = "k_euler"
""", encoding="utf-8")
    return config


def test_cli_trains_from_sd_scripts_configs(tmp_path, tiny, comfy_dirs, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_models", lambda cfg: (*tiny.build_checkpoint("sd15", 0), "tiny_sd15.safetensors"))
    out = tmp_path / "out"
    rc = cli.main(["--config_file", str(_config(tmp_path, out)), "--dataset_config", str(_dataset(tmp_path)), "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "step 2/2  loss" in printed and "cli_lora.safetensors" in printed
    names = {p.name for p in out.iterdir()}
    assert {"cli_lora.safetensors", "cli_lora-state.pt", "cli_lora-step00000001.safetensors", "cli_lora_loss.png", "sample"} <= names
    assert [p.name for p in (out / "sample").iterdir()] == ["cli_lora_000002_00.png"]
    with safetensors.safe_open(out / "cli_lora.safetensors", "pt") as f:
        meta = f.metadata()
    assert meta["ss_sd_model_name"] == "tiny_sd15.safetensors" and "Lion" in meta["ss_optimizer"]
    assert meta["ss_seed"] == "3" and meta["ss_lr_scheduler"] == "cosine" and meta["ss_network_alpha"] == "2.0"


def test_cli_names_the_bad_input(tmp_path, tiny, monkeypatch, capsys):
    monkeypatch.setattr(cli, "load_models", lambda cfg: (*tiny.build_checkpoint("sd15", 0), "tiny.safetensors"))
    dataset = _dataset(tmp_path)
    dataset.write_text(dataset.read_text().replace('"imgs"', '"missing_imgs"'), encoding="utf-8")
    rc = cli.main(["--config_file", str(_config(tmp_path, tmp_path / "out")), "--dataset_config", str(dataset)])
    assert rc == 1 and "missing_imgs" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_program_and_finds_comfyui(tmp_path):
    """The real entry point: bootstraps ComfyUI from COMFYUI_DIR; a missing config exits 1."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--config_file", str(tmp_path / "none.toml")],
                          capture_output=True, text=True, env={"COMFYUI_DIR": str(COMFYUI_DIR), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert proc.returncode == 1 and "config file not found" in proc.stderr and "none.toml" in proc.stderr
