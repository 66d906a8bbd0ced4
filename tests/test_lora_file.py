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


def facts(**changes):
    """Every training fact, as a plain SDXL run with no optional option would give them."""
    f = {
        "session_id": 1234567890, "training_started_at": 1700000000.0, "training_finished_at": 1700000100.5,
        "output_name": "my_lora", "sd_model_name": "sd_xl_base_1.0.safetensors", "learning_rate": 1e-4,
        "text_encoder_lr": 5e-5, "unet_lr": None, "optimizer": "torch.optim.adamw.AdamW", "lr_scheduler": "constant",
        "lr_warmup_steps": 0, "max_grad_norm": 1.0, "num_epochs": 2, "max_train_steps": 20, "steps": 20, "epoch": 2,
        "gradient_checkpointing": True, "gradient_accumulation_steps": 1, "mixed_precision": "bf16", "full_fp16": False,
        "fp8_base": False, "fp8_base_unet": False, "clip_skip": None, "max_token_length": None, "cache_latents": True, "seed": 42,
        "noise_offset": None, "multires_noise_iterations": None, "multires_noise_discount": 0.3,
        "adaptive_noise_scale": None, "zero_terminal_snr": False, "min_snr_gamma": 5.0, "loss_type": "l2",
        "huber_schedule": "snr", "huber_c": 0.1, "prior_loss_weight": 1.0, "training_comment": None,
        "validate_every_n_steps": None,
        "num_train_images": 10, "num_reg_images": 0, "num_batches_per_epoch": 10, "batch_size_per_device": 1,
        "enable_bucket": False, "bucket_no_upscale": False, "min_bucket_reso": 256, "max_bucket_reso": 1024,
        "color_aug": False, "flip_aug": False, "random_crop": False, "shuffle_caption": False, "keep_tokens": 0,
        "caption_dropout_rate": 0.0, "caption_dropout_every_n_epochs": 0, "caption_tag_dropout_rate": 0.0,
        "datasets": [{"n_repeats": 10}], "tag_frequency": {"cat": 3}, "dataset_dirs": {"cat": {"n_repeats": 10, "img_count": 1}},
        "reg_dataset_dirs": {}, "bucket_info": {"buckets": {}},
        "resolution": (1024, 1024), "prediction_type": "epsilon", "metadata_title": None, "metadata_author": None,
        "metadata_description": None, "metadata_license": None, "metadata_tags": None, "timestep_range": None,
        "sd_model_file": None, "vae_file": None,
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
    assert meta["ss_network_module"] == "networks.lora"
    assert (meta["ss_network_dim"], meta["ss_network_alpha"]) == ("4", "2.0")
    assert json.loads(meta["ss_network_args"]) == {"conv_dim": "2", "module_dropout": "0.1"}
    assert meta["ss_base_model_version"] == "sd_v1" and meta["ss_resolution"] == "(1024, 1024)"
    assert json.loads(meta["ss_tag_frequency"]) == {"cat": 3} and meta["ss_noise_offset"] == "None"
    assert meta["ss_unet_lr"] == "None" and meta["ss_session_id"] == "1234567890"
    # sd-scripts' train_batch_size x processes (1) x gradient_accumulation_steps
    assert training_metadata(facts(batch_size_per_device=2, gradient_accumulation_steps=3))["ss_total_batch_size"] == "6"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1/lora" and meta["modelspec.title"] == "my_lora"
    assert meta["modelspec.resolution"] == "1024x1024" and meta["modelspec.prediction_type"] == "epsilon"
    assert meta["modelspec.date"].startswith("2023-11-1") and meta["modelspec.sai_model_spec"] == "1.0.1"
    assert "modelspec.encoder_layer" not in meta and "modelspec.timestep_range" not in meta
    assert "ss_sd_model_hash" not in meta and meta["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"
    assert len(meta["sshs_model_hash"]) == 64 and len(meta["sshs_legacy_hash"]) == 8
    with pytest.raises(ValueError, match="training facts missing: steps"):
        training_metadata({k: v for k, v in facts().items() if k != "steps"})
    assert set(TRAINING_FACTS) == set(facts())


def test_a_model_path_that_is_no_file_gets_no_hash(tmp_path):
    meta = training_metadata(facts(sd_model_file=str(tmp_path / "gone.safetensors"), vae_file=str(tmp_path)))
    assert not {"ss_sd_model_hash", "ss_new_sd_model_hash", "ss_vae_name", "ss_vae_hash"} & set(meta)
    assert meta["ss_sd_model_name"] == "sd_xl_base_1.0.safetensors"


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
    with pytest.raises(OSError, match="No space left on device.*previous file there is unchanged") as err:
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
