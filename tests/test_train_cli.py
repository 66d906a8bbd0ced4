"""scripts/train.py: an sd-scripts config TOML and dataset TOML train the same LoRA the node
would, from a real checkpoint file and a separate VAE file read by the script's own loading
code; bad input exits 1 with a message that names it."""
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import safetensors
import safetensors.torch
import torch
from PIL import Image

import comfy.sd1_clip
import comfy.supported_models
from checkpoint_files import taesd, write_checkpoint
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
pretrained_model_name_or_path = "{(root / 'tiny_sd15.safetensors').as_posix()}"
vae = "{(root / 'tiny_vae.safetensors').as_posix()}"
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


@pytest.fixture(scope="module")
def model_files(tmp_path_factory, tiny):
    """A real checkpoint file and a separate VAE file, written once for the module's tests."""
    root = tmp_path_factory.mktemp("model_files")
    write_checkpoint(tiny, root / "tiny_sd15.safetensors")
    vae_file = taesd(tiny, 7)  # differs from the checkpoint's own VAE (seed 2)
    safetensors.torch.save_file(vae_file.state_dict(), root / "tiny_vae.safetensors")
    yield root, vae_file
    (root / "tiny_sd15.safetensors").unlink()  # 300 MB: not kept among pytest's last runs


def _use_model_files(root, model_files):
    for name in ("tiny_sd15.safetensors", "tiny_vae.safetensors"):
        (root / name).symlink_to(model_files[0] / name)


@pytest.mark.slow
def test_cli_trains_from_a_checkpoint_file_and_a_vae_file(tmp_path, model_files, comfy_dirs, monkeypatch, capsys):
    _use_model_files(tmp_path, model_files)
    vae_file = model_files[1]
    loaded = []
    real_load = cli.load_models
    monkeypatch.setattr(cli, "load_models", lambda cfg: loaded.append(real_load(cfg)) or loaded[-1])  # watch, not replace
    out = tmp_path / "out"
    rc = cli.main(["--config_file", str(_config(tmp_path, out)), "--dataset_config", str(_dataset(tmp_path)), "--seed", "3"])
    assert rc == 0, capsys.readouterr().err
    model, clip, vae, name = loaded[0]
    assert type(model.model.model_config) is comfy.supported_models.SD15 and name == "tiny_sd15.safetensors"
    assert model.model.model_config.unet_config["model_channels"] == 320
    assert isinstance(clip.cond_stage_model, comfy.sd1_clip.SD1ClipModel)
    used = vae.first_stage_model.state_dict()  # the --vae file's weights, not the checkpoint's
    assert all(torch.equal(used[k].float(), v.float()) for k, v in vae_file.state_dict().items())
    printed = capsys.readouterr().out
    assert "step 2/2  loss" in printed and "cli_lora.safetensors" in printed
    names = {p.name for p in out.iterdir()}
    assert {"cli_lora.safetensors", "cli_lora-state.pt", "cli_lora-step00000001.safetensors", "cli_lora_loss.png", "sample"} <= names
    assert [p.name for p in (out / "sample").iterdir()] == ["cli_lora_000002_00.png"]
    with safetensors.safe_open(out / "cli_lora.safetensors", "pt") as f:
        meta = f.metadata()
        keys = set(f.keys())
    assert meta["ss_sd_model_name"] == "tiny_sd15.safetensors" and "Lion" in meta["ss_optimizer"]
    assert meta["ss_seed"] == "3" and meta["ss_lr_scheduler"] == "cosine" and meta["ss_network_alpha"] == "2.0"
    assert "lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys  # kohya SD1.5 names


def test_cli_names_the_bad_input(tmp_path, tiny, monkeypatch, capsys):
    """A missing or unreadable checkpoint, a missing image folder, a malformed --allow_module."""
    dataset = _dataset(tmp_path)
    config = _config(tmp_path, tmp_path / "out")
    assert cli.main(["--config_file", str(config), "--dataset_config", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "checkpoint file not found" in err and "tiny_sd15.safetensors" in err
    (tmp_path / "tiny_sd15.safetensors").write_bytes(b"not a checkpoint")
    assert cli.main(["--config_file", str(config), "--dataset_config", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "vae: file not found" in err and "tiny_vae.safetensors" in err
    (tmp_path / "tiny_vae.safetensors").write_bytes(b"not a vae")
    assert cli.main(["--config_file", str(config), "--dataset_config", str(dataset)]) == 1
    err = capsys.readouterr().err
    assert "tiny_sd15.safetensors" in err and "not a readable checkpoint" in err
    monkeypatch.setattr(cli, "load_models", lambda cfg: (*tiny.build_checkpoint("sd15", 0), "tiny.safetensors"))
    dataset.write_text(dataset.read_text().replace('"imgs"', '"missing_imgs"'), encoding="utf-8")
    assert cli.main(["--config_file", str(config), "--dataset_config", str(dataset)]) == 1
    assert "missing_imgs" in capsys.readouterr().err
    assert cli.main(["--config_file", str(config), "--allow_module", "bad name"]) == 1
    assert "--allow_module 'bad name'" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_runs_as_a_program_and_finds_comfyui(tmp_path):
    """The real entry point: bootstraps ComfyUI from COMFYUI_DIR; a missing config exits 1."""
    proc = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), "--config_file", str(tmp_path / "none.toml")],
                          capture_output=True, text=True, env={"COMFYUI_DIR": str(COMFYUI_DIR), "PATH": "/usr/bin:/bin"},
                          timeout=300)
    assert proc.returncode == 1 and "config file not found" in proc.stderr and "none.toml" in proc.stderr


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, str(REPO / "scripts" / "train.py"), *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env={"COMFYUI_DIR": str(COMFYUI_DIR), "PATH": "/usr/bin:/bin"}, **kw)


@pytest.mark.slow
def test_a_run_killed_right_after_a_save_resumes_to_the_same_weights(tmp_path, model_files):
    """kill -9 as soon as the step-2 state is on disk, resume from the newest state file: the
    final LoRA equals an uninterrupted run's."""
    _use_model_files(tmp_path, model_files)
    dataset, out = _dataset(tmp_path), tmp_path / "out"
    config = _config(tmp_path, out)
    text = config.read_text(encoding="utf-8").replace("max_train_steps = 2", "max_train_steps = 4")
    text = text.replace("cache_latents_to_disk = true", 'save_precision = "float"').replace("sample_every_n_steps = 2", "")
    config.write_text(text, encoding="utf-8")
    common = ["--config_file", str(config), "--dataset_config", str(dataset), "--seed", "5"]

    whole = _run_cli([*common, "--output_name", "whole"])  # the uninterrupted run, alongside
    half = _run_cli([*common, "--output_name", "half"])
    saved = out / "half-step00000002-state.pt"
    deadline = time.monotonic() + 900
    while not saved.exists() and half.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    half.send_signal(signal.SIGKILL)
    assert half.wait(timeout=60) == -signal.SIGKILL and saved.exists()
    assert not (out / "half.safetensors").exists()  # killed before the end
    for file in out.glob("half-step*.safetensors"):  # whatever the kill cut short, no saved file is torn
        safetensors.torch.load_file(file)
    assert whole.wait(timeout=900) == 0, whole.stderr.read()
    states = sorted(out.glob("half-step*-state.pt"))
    resumed = _run_cli([*common, "--output_name", "half", "--resume", str(states[-1])])
    assert resumed.wait(timeout=900) == 0, resumed.stderr.read()
    assert "step 4/4" in resumed.stdout.read()

    a = safetensors.torch.load_file(out / "whole.safetensors")
    b = safetensors.torch.load_file(out / "half.safetensors")
    assert a.keys() == b.keys() and len(a) > 0
    for k in a:
        assert torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-7), k
    assert any(a[k].abs().sum() > 0 for k in a if k.endswith("lora_up.weight"))
