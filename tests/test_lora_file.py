"""The LoRA file: metadata every tool reads, sd-scripts' hash, save precision, atomic writes,
and clear errors for files that are not kohya LoRAs."""
import hashlib
import json
import os
import time

import pytest
import safetensors
import safetensors.torch
import torch

import lllite_kit.training.lora.file as lora_file
from lllite_kit.training.lora import TRAINING_FACTS, load_lora, training_metadata
from lora_helpers import attached, randomize

# every ss_* key reference/TRAINING.md lists
DOCUMENTED_KEYS = """ss_network_module ss_network_dim ss_network_alpha ss_network_args ss_base_model_version
ss_sd_model_name ss_resolution ss_learning_rate ss_unet_lr ss_text_encoder_lr ss_optimizer ss_lr_scheduler
ss_num_train_images ss_num_epochs ss_steps ss_batch_size_per_device ss_mixed_precision ss_seed ss_datasets
ss_bucket_info ss_tag_frequency ss_training_started_at ss_training_finished_at ss_output_name ss_noise_offset
ss_min_snr_gamma sshs_model_hash""".split()


def facts(**changes):
    f = {
        "sd_model_name": "sd_xl_base_1.0.safetensors", "resolution": (1024, 1024), "learning_rate": 1e-4,
        "unet_lr": 1e-4, "text_encoder_lr": 5e-5, "optimizer": "AdamW", "lr_scheduler": "constant",
        "num_train_images": 10, "num_epochs": 2, "steps": 20, "batch_size_per_device": 1, "mixed_precision": "bf16",
        "seed": 42, "datasets": [{"n_repeats": 10}], "bucket_info": {"buckets": {}}, "tag_frequency": {"cat": 3},
        "training_started_at": 1700000000.0, "training_finished_at": 1700000100.5, "output_name": "my_lora",
        "noise_offset": None, "min_snr_gamma": 5.0, "prediction_type": "epsilon",
    }
    f.update(changes)
    return f


@pytest.fixture(scope="module")
def sd15_adapter(tiny):
    _, _, adapter = attached(tiny, "sd15", dim=4, alpha=2.0, conv_dim=2, module_dropout=0.1)
    randomize(adapter)
    return adapter


def _read(path):
    with safetensors.safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, f.metadata()


def test_metadata_keys_and_values(sd15_adapter, tmp_path):
    path = tmp_path / "my_lora.safetensors"
    sd15_adapter.save(str(path), torch.float16, training_metadata(facts()))
    _, meta = _read(path)
    assert set(DOCUMENTED_KEYS) <= set(meta)
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "module_dropout": "0.1"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_resolution"] == "(1024, 1024)"
    assert json.loads(meta["ss_tag_frequency"]) == {"cat": 3} and meta["ss_noise_offset"] == "None"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "my_lora"
    assert meta["modelspec.resolution"] == "1024x1024" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.date"].startswith("2023-11-1")
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8
    with pytest.raises(ValueError, match="training facts missing: steps"):
        training_metadata({k: v for k, v in facts().items() if k != "steps"})
    assert len(TRAINING_FACTS) == 22


def test_save_precision_and_hash(sd15_adapter, tmp_path):
    a, b = tmp_path / "a.safetensors", tmp_path / "b.safetensors"
    sd15_adapter.save(str(a), torch.bfloat16, training_metadata(facts()))
    sd15_adapter.save(str(b), torch.bfloat16, training_metadata(facts(output_name="other", training_finished_at=time.time())))
    tensors, meta_a = _read(a)
    assert {t.dtype for t in tensors.values()} == {torch.bfloat16}
    assert tensors["lora_unet_down_blocks_0_attentions_0_proj_in.alpha"].ndim == 0
    _, meta_b = _read(b)
    assert meta_a["sshs_model_hash"] == meta_b["sshs_model_hash"]  # depends on the weights only
    raw = a.read_bytes()
    header = int.from_bytes(raw[:8], "little")
    assert meta_a["sshs_model_hash"] == hashlib.sha256(raw[8 + header:]).hexdigest()
    sd15_adapter.save(str(b), torch.float32, training_metadata(facts()))
    assert _read(b)[1]["sshs_model_hash"] != meta_a["sshs_model_hash"]


def test_failed_write_keeps_previous_file(sd15_adapter, tmp_path, monkeypatch):
    path = tmp_path / "keep.safetensors"
    sd15_adapter.save(str(path), torch.float16, training_metadata(facts()))
    before = path.read_bytes()

    def disk_full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(lora_file.os, "fsync", disk_full)
    with pytest.raises(OSError, match="No space left on device.*previous file there, if any, is unchanged") as err:
        sd15_adapter.save(str(path), torch.float32, training_metadata(facts()))
    assert str(path) in str(err.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["keep.safetensors"]  # no temporary file left behind


def test_reading_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        load_lora(str(tmp_path / "missing.safetensors"))
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable .safetensors file"):
        load_lora(str(junk))
    comfy_style = tmp_path / "comfy_style.safetensors"  # core TrainLoraNode's key names
    safetensors.torch.save_file({"diffusion_model.input_blocks.1.1.proj_in.lora_up.weight": torch.zeros(2, 2)}, str(comfy_style))
    with pytest.raises(ValueError, match="comfy_style.safetensors: not a kohya LoRA"):
        load_lora(str(comfy_style))
