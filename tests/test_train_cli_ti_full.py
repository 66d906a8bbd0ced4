"""scripts/train.py --trainer ti | full: the trainers' own sd-scripts options come from the config
file (they are not TrainConfig fields), the files land in ComfyUI's embeddings / checkpoints
folders, and a missing or wrong option exits 1 naming it."""
import sys

import numpy as np
import pytest
import safetensors
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "scripts"))
import train as cli  # noqa: E402


def _files(root, trainer_lines: str):
    folder = root / "imgs"
    folder.mkdir()
    for i in range(2):
        y, x = np.mgrid[0:64, 0:64]
        Image.fromarray(np.stack([x * 4 % 256, (y * (4 + i)) % 256, x * 0 + 128 * i], -1).astype(np.uint8)).save(folder / f"{i}.png")
        (folder / f"{i}.txt").write_text(f"sks thing {i}", encoding="utf-8")
    dataset = root / "dataset.toml"
    dataset.write_text('[general]\ncaption_extension = ".txt"\n[[datasets]]\nresolution = 64\nbatch_size = 2\n'
                       '[[datasets.subsets]]\nimage_dir = "imgs"\nnum_repeats = 1\n', encoding="utf-8")
    config = root / "config.toml"
    config.write_text(f'pretrained_model_name_or_path = "tiny.safetensors"\noutput_name = "cli_run"\nmax_train_steps = 1\n'
                      f'learning_rate = 1e-3\nsave_state = false\n{trainer_lines}', encoding="utf-8")
    return ["--config_file", str(config), "--dataset_config", str(dataset)]


@pytest.fixture
def tiny_checkpoint(tiny, monkeypatch):
    monkeypatch.setattr(cli, "load_models", lambda cfg: (*tiny.build_checkpoint("sdxl", 0), "tiny.safetensors"))


@pytest.fixture(scope="module")
def embeddings(comfy_dirs):
    """The embeddings folder in the test's ComfyUI folders (as the TI node's graph test does)."""
    import folder_paths

    folder = comfy_dirs / "models" / "embeddings"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("embeddings", str(folder), is_default=True)
    return folder


def test_ti_options_from_the_config_file(tmp_path, embeddings, tiny_checkpoint, capsys):
    args = _files(tmp_path, 'token_string = "sksthing"\ninit_word = "thing"\nnum_vectors_per_token = 2\n'
                            'use_object_template = true\n')
    assert cli.main([*args, "--trainer", "ti"]) == 0, capsys.readouterr().err
    with safetensors.safe_open(embeddings / "cli_run.safetensors", "pt") as f:
        shapes = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    assert shapes == {"clip_l": (2, 40), "clip_g": (2, 48)}  # SDXL's two encoders, 2 vectors each


def test_full_options_from_the_config_file(tmp_path, comfy_dirs, tiny_checkpoint, capsys):
    args = _files(tmp_path, "learning_rate_te1 = 0\nmax_grad_norm = 0\nfused_backward_pass = true\n"
                            'optimizer_type = "AdaFactor"\n')
    assert cli.main([*args, "--trainer", "full"]) == 0, capsys.readouterr().err
    with safetensors.safe_open(comfy_dirs / "models" / "checkpoints" / "cli_run.safetensors", "pt") as f:
        prefixes = {k.split(".")[0] for k in f.keys()}
        meta = f.metadata()
    assert {"model", "conditioner", "first_stage_model"} <= prefixes
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base"


def test_trainer_options_are_mapped_and_checked():
    options, rest = cli.trainer_options("full", {"learning_rate_te": 1e-6, "train_text_encoder": True, "seed": 3})
    assert (options[0].learning_rate_te1, options[0].train_text_encoder, rest) == (1e-6, True, {"seed": 3})
    assert cli.trainer_options("full", {"fsdp": True})[0][0].fsdp  # sharded under torchrun (docs/distributed.md)
    options, _ = cli.trainer_options("ti", {"token_string": "x", "use_style_template": True, "weights": "a.safetensors"})
    assert (options[0].templates, options[0].start_from) == ("style", "a.safetensors")
    assert cli.trainer_options("lora", {"seed": 3}) == ([], {"seed": 3})
    with pytest.raises(ValueError, match="needs token_string"):
        cli.trainer_options("ti", {"init_word": "dog"})
    with pytest.raises(ValueError, match="exclude each other"):
        cli.trainer_options("ti", {"token_string": "x", "use_object_template": True, "use_style_template": True})


def test_a_trainers_option_under_another_trainer_is_named(tmp_path, tiny_checkpoint, capsys):
    args = _files(tmp_path, 'token_string = "sksthing"\n')
    assert cli.main([*args, "--trainer", "full"]) == 1
    assert "token_string" in capsys.readouterr().err
