"""Trained files carry what sd-scripts writes: every ss_* key of train_network.py with its
value formats, the SAI modelspec 1.0.1 keys of sai_model_spec.py, and the A1111 hashes of
the checkpoint and VAE files; a trained LoRA still loads in core's LoraLoader."""
import hashlib
import json
import logging

import numpy as np
import pytest
import safetensors
import torch
from PIL import Image

import comfy.model_management
import comfy.sd
import nodes
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.data.config import DatasetConfig, SubsetConfig
from lllite_kit.training.lllite_adapter import LLLiteAdapter
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig, training_metadata
from lllite_kit.training.session import train_lora
from test_lora_file import facts

# Every ss_* key sd-scripts' train_network.py writes, read from kohya-ss/sd-scripts
# train_network.py at commit 48d368fa557731ad0488c07304dfeba8c07910eb (main, 2026-02-16):
# NetworkTrainer.train's `metadata = {...}` block, both dataset branches (a dataset config
# writes ss_datasets, the plain options the rest; we write both), the model and VAE name/hash
# block and save_model's ss_training_finished_at / ss_steps / ss_epoch.
SD_SCRIPTS_SS_KEYS = frozenset("""
ss_session_id ss_training_started_at ss_output_name ss_learning_rate ss_text_encoder_lr ss_unet_lr
ss_num_train_images ss_num_validation_images ss_num_reg_images ss_num_batches_per_epoch ss_num_epochs
ss_gradient_checkpointing ss_gradient_accumulation_steps ss_max_train_steps ss_lr_warmup_steps ss_lr_scheduler
ss_network_module ss_network_dim ss_network_alpha ss_network_dropout ss_mixed_precision ss_full_fp16 ss_v2
ss_base_model_version ss_clip_skip ss_max_token_length ss_cache_latents ss_seed ss_lowram ss_noise_offset
ss_multires_noise_iterations ss_multires_noise_discount ss_adaptive_noise_scale ss_zero_terminal_snr
ss_training_comment ss_sd_scripts_commit_hash ss_optimizer ss_max_grad_norm ss_caption_dropout_rate
ss_caption_dropout_every_n_epochs ss_caption_tag_dropout_rate ss_face_crop_aug_range ss_prior_loss_weight
ss_min_snr_gamma ss_scale_weight_norms ss_ip_noise_gamma ss_debiased_estimation ss_noise_offset_random_strength
ss_ip_noise_gamma_random_strength ss_loss_type ss_huber_schedule ss_huber_scale ss_huber_c ss_fp8_base
ss_fp8_base_unet ss_validation_seed ss_validation_split ss_max_validation_steps ss_validate_every_n_epochs
ss_validate_every_n_steps ss_resize_interpolation ss_datasets ss_tag_frequency ss_dataset_dirs
ss_batch_size_per_device ss_total_batch_size ss_resolution ss_color_aug ss_flip_aug ss_random_crop
ss_shuffle_caption ss_enable_bucket ss_bucket_no_upscale ss_min_bucket_reso ss_max_bucket_reso ss_keep_tokens
ss_reg_dataset_dirs ss_bucket_info ss_network_args ss_sd_model_hash ss_new_sd_model_hash ss_sd_model_name
ss_vae_hash ss_new_vae_hash ss_vae_name ss_training_finished_at ss_steps ss_epoch
""".split())
# written only when: network_args are given / the checkpoint path is a file / a separate --vae is given
SS_ONLY_WITH_NETWORK_ARGS = {"ss_network_args"}
SS_ONLY_WITH_MODEL_FILE = {"ss_sd_model_hash", "ss_new_sd_model_hash"}
SS_ONLY_WITH_VAE = {"ss_vae_hash", "ss_new_vae_hash", "ss_vae_name"}
# sd-scripts' get_sai_model_spec (library/train_util.py, sai_model_spec.py build_metadata) for a
# LoRA, same commit: always these; author/description/license/tags when metadata_* is given,
# timestep_range with min/max_timestep, encoder_layer with clip_skip.
MODELSPEC_ALWAYS = {f"modelspec.{k}" for k in (
    "sai_model_spec", "architecture", "implementation", "title", "resolution", "date", "prediction_type",
    "implementation_version")}
MODELSPEC_OPTIONAL = {f"modelspec.{k}" for k in ("author", "description", "license", "tags", "timestep_range", "encoder_layer")}
SSHS = {"sshs_model_hash", "sshs_legacy_hash"}  # networks/lora.py save_weights


def _folder(root, name, n, shift):
    root.mkdir()
    for i in range(n):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * 4 + shift * i) % 256, (y * 4) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 300) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(root / f"{i}.png")
        (root / f"{i}.txt").write_text(f"{name}, thing {i}", encoding="utf-8")


def _random_file(path, size, seed):
    """A stand-in model file, bigger than 1 MiB + 64 KiB so the old hash reads real bytes."""
    path.write_bytes(np.random.default_rng(seed).integers(0, 256, size, dtype=np.uint8).tobytes())
    return path


@pytest.fixture(scope="module")
def run(tiny, comfy_dirs, tmp_path_factory):
    """One tiny LoRA run with every option that adds keys: network_args, a checkpoint file and
    a separate VAE file as ComfyUI's loaders leave them, metadata options, clip skip, timesteps."""
    root = tmp_path_factory.mktemp("metadata_run")
    _folder(root / "imgs", "sks", 1, 40)
    _folder(root / "reg", "thing", 1, 90)
    ckpt, vae_path = _random_file(root / "tiny_ckpt.safetensors", 1_200_000, 1), _random_file(root / "tiny_vae.safetensors", 1_100_000, 2)
    model, clip, vae = tiny.build_checkpoint("sd15", 0)
    # what CheckpointLoaderSimple and Load VAE keep: the loader and the file path, to reload from
    model.cached_patcher_init = (comfy.sd.load_checkpoint_guess_config, (str(ckpt), False, False, False, None, True, {}, {}), 0)
    vae.patcher.cached_patcher_init = (comfy.sd.load_vae_patcher, (str(vae_path), None, None))
    datasets = [DatasetConfig(subsets=[SubsetConfig(image_dir=root / "imgs", caption_extension=".txt", num_repeats=2),
                                       SubsetConfig(image_dir=root / "reg", caption_extension=".txt", is_reg=True)],
                              resolution=(64, 64), batch_size=1)]
    cfg = TrainConfig(
        output_name="meta_lora", max_train_steps=2, save_every_n_steps=1, learning_rate=1e-3, seed=7,
        network_dim=4, network_alpha=2.0, network_args={"module_dropout": "0.1"}, network_train_unet_only=True,
        optimizer_args={"weight_decay": 0.01}, clip_skip=2, min_timestep=100,
        training_comment="trained for the metadata test", metadata_title="Meta LoRA", metadata_author="tester",
        metadata_description="a tiny LoRA", metadata_license="CC0", metadata_tags="tiny,test")
    out = comfy_dirs / "models" / "loras"
    result = train_lora(cfg, model, clip, vae, datasets, output_dir=out, model_name="tiny_ckpt.safetensors")
    metas = []
    for path in result.saved:
        with safetensors.safe_open(str(path), framework="pt") as f:
            metas.append(f.metadata())
    yield {"result": result, "metas": metas, "model": model, "clip": clip, "ckpt": ckpt, "vae": vae_path}
    comfy.model_management.unload_all_models()


def test_lora_file_has_every_sd_scripts_key(run):
    for meta in run["metas"]:
        assert {k for k in meta if k.startswith("ss_")} == SD_SCRIPTS_SS_KEYS
        spec = {k for k in meta if k.startswith("modelspec.")}
        assert spec == MODELSPEC_ALWAYS | MODELSPEC_OPTIONAL
        assert set(meta) == SD_SCRIPTS_SS_KEYS | spec | SSHS


def test_without_the_options_the_optional_keys_are_left_out_as_sd_scripts_does(tiny):
    model = tiny.build_model("sd15", 0)
    adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=1.0, train_text_encoder=False), model.model.model_config)
    adapter.attach(model.model.diffusion_model, {})
    try:
        meta = {**training_metadata(facts()), **adapter.metadata()}
    finally:
        adapter.detach()
    optional = SS_ONLY_WITH_NETWORK_ARGS | SS_ONLY_WITH_MODEL_FILE | SS_ONLY_WITH_VAE
    assert {k for k in meta if k.startswith("ss_")} == SD_SCRIPTS_SS_KEYS - optional
    assert {k for k in meta if k.startswith("modelspec.")} == MODELSPEC_ALWAYS


def test_values_in_sd_scripts_formats(run):
    step1, final = run["metas"]
    assert [p.name for p in run["result"].saved] == ["meta_lora-step00000001.safetensors", "meta_lora.safetensors"]
    # one random id per run, the same in each of its files
    assert step1["ss_session_id"] == final["ss_session_id"] and 0 <= int(final["ss_session_id"]) <= 2**32
    # 1 train image x 2 repeats and 1 reg image (repeated to as many), batch size 1: 4 batches an epoch;
    # ss_epoch counts the epochs done, the last save all of them
    assert (step1["ss_steps"], step1["ss_epoch"], final["ss_steps"], final["ss_epoch"]) == ("1", "0", "2", "1")
    assert final["ss_num_batches_per_epoch"] == "4" and final["ss_num_epochs"] == "1" and final["ss_max_train_steps"] == "2"
    assert (final["ss_num_train_images"], final["ss_num_reg_images"], final["ss_num_validation_images"]) == ("2", "1", "0")
    assert final["ss_resolution"] == "(64, 64)" and final["ss_batch_size_per_device"] == "1"
    assert final["ss_total_batch_size"] == "1" and final["ss_gradient_accumulation_steps"] == "1"
    assert final["ss_training_comment"] == "trained for the metadata test"
    assert final["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.01)"
    assert (final["ss_learning_rate"], final["ss_unet_lr"], final["ss_text_encoder_lr"]) == ("0.001", "None", "None")
    assert (final["ss_clip_skip"], final["ss_max_token_length"], final["ss_seed"]) == ("2", "None", "7")
    assert (final["ss_noise_offset"], final["ss_multires_noise_discount"], final["ss_max_grad_norm"]) == ("None", "0.3", "1.0")
    assert (final["ss_loss_type"], final["ss_huber_schedule"], final["ss_huber_c"], final["ss_huber_scale"]) == ("l2", "snr", "0.1", "1.0")
    assert (final["ss_cache_latents"], final["ss_gradient_checkpointing"], final["ss_zero_terminal_snr"]) == ("True", "False", "False")
    assert (final["ss_v2"], final["ss_lowram"], final["ss_enable_bucket"], final["ss_flip_aug"]) == ("False",) * 4
    assert (final["ss_lr_warmup_steps"], final["ss_caption_dropout_rate"], final["ss_prior_loss_weight"]) == ("0", "0.0", "1.0")
    assert final["ss_sd_scripts_commit_hash"] == "(unknown)"  # no sd-scripts commit made it: see modelspec.implementation_version
    assert float(final["ss_training_started_at"]) <= float(final["ss_training_finished_at"])
    assert (final["ss_network_dim"], final["ss_network_alpha"], json.loads(final["ss_network_args"])) == ("4", "2.0", {"module_dropout": "0.1"})
    assert json.loads(final["ss_dataset_dirs"]) == {"imgs": {"n_repeats": 2, "img_count": 1}}
    assert json.loads(final["ss_reg_dataset_dirs"]) == {"reg": {"n_repeats": 1, "img_count": 1}}
    assert json.loads(final["ss_tag_frequency"])["imgs"] == {"sks": 1, "thing 0": 1}
    assert json.loads(final["ss_bucket_info"])["buckets"]["0"]["resolution"] == [64, 64]
    assert [d["resolution"] for d in json.loads(final["ss_datasets"])] == [[64, 64]]


def test_model_and_vae_files_are_named_and_hashed_like_sd_scripts(run):
    final = run["metas"][-1]
    for kind, path in (("sd_model", run["ckpt"]), ("vae", run["vae"])):
        data = path.read_bytes()
        assert final[f"ss_{kind}_name"] == path.name
        assert final[f"ss_{kind}_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]  # A1111's old hash
        assert final[f"ss_new_{kind}_hash"] == hashlib.sha256(data).hexdigest()


def test_modelspec_1_0_1(run):
    final = run["metas"][-1]
    assert final["modelspec.sai_model_spec"] == "1.0.1"
    assert final["modelspec.architecture"] == "stable-diffusion-v1/lora" and final["modelspec.implementation"] == "diffusers"
    assert (final["modelspec.title"], final["modelspec.author"], final["modelspec.description"]) == ("Meta LoRA", "tester", "a tiny LoRA")
    assert (final["modelspec.license"], final["modelspec.tags"]) == ("CC0", "tiny,test")
    assert (final["modelspec.resolution"], final["modelspec.prediction_type"]) == ("64x64", "epsilon")
    assert (final["modelspec.timestep_range"], final["modelspec.encoder_layer"]) == ("100,1000", "2")
    assert final["modelspec.implementation_version"].startswith("comfyui-lllite-kit/0.1.0")
    assert len(final["modelspec.date"]) == 19 and final["modelspec.date"][10] == "T"  # ISO 8601 to the second


def test_trained_file_loads_in_core_lora_loader(run, caplog):
    caplog.set_level(logging.WARNING)
    model_lora, _ = nodes.LoraLoader().load_lora(run["model"], run["clip"], "meta_lora.safetensors", 1.0, 1.0)
    assert [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()] == []
    with safetensors.safe_open(str(run["result"].final_path), framework="pt") as f:
        modules = {k.rsplit(".", 2)[0] for k in f.keys()}
    assert modules and len(model_lora.patches) == len(modules)


def test_lllite_file_has_the_modelspec_of_sd_scripts_lllite_trainer(tiny, tmp_path):
    """sdxl_train_control_net_lllite.py writes get_sai_model_spec's keys with the architecture
    stable-diffusion-xl-v1-base/control-net-lllite (and no sshs hash)."""
    model = tiny.build_model("sdxl", 0)
    adapter = LLLiteAdapter("sdxl", 8, 8)
    adapter.attach(model.model.diffusion_model, {})
    try:
        path = tmp_path / "lllite.safetensors"
        adapter.save(str(path), torch.float16, training_metadata(facts(output_name="lllite", metadata_title=None)))
    finally:
        adapter.detach()
    with safetensors.safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert {k for k in meta if k.startswith("modelspec.")} == MODELSPEC_ALWAYS
    assert meta["modelspec.sai_model_spec"] == "1.0.1" and meta["modelspec.title"] == "lllite"
    assert meta["modelspec.architecture"] == "stable-diffusion-xl-v1-base/control-net-lllite"
    assert meta["modelspec.implementation"] == "https://github.com/Stability-AI/generative-models"
    assert meta["modelspec.resolution"] == "1024x1024" and not SSHS & set(meta)
    assert meta["ss_network_module"] == "networks.control_net_lllite" and meta["ss_cond_emb_dim"] == "8"
