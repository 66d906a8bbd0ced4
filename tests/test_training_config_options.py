"""No silent option: every sd-scripts training key is implemented, accepted because it cannot
change the result, or refused with the key and the reason; each implemented precision, saving,
text and sample option changes what the run does, measured."""
import re
from pathlib import Path

import pytest
import torch

import comfy.ops
from lllite_kit.training.comfy_bridge import TextConditioner, latent_encoder, trainable_model
from lllite_kit.training.config import (INERT_KEYS, KNOWN_KEYS, REFUSED_KEYS, TrainConfig, apply_dataset_options,
                                        config_from_dict)
from lllite_kit.training.data.config import DatasetConfig, SubsetConfig
from lllite_kit.training.data.errors import DatasetError
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lllite_kit.training.prompts import parse_prompt_line
from lllite_kit.training.samples import SampleRenderer
from training_helpers import ListData, TinyAdapter, eval_loss, no_metadata, unit_group_norms

# every --option of sd-scripts' train_network.py, sdxl_train_network.py and
# sdxl_train_control_net_lllite.py (kohya-ss/sd-scripts 48d368f: their setup_parser and the
# library add_*_arguments they call)
SD_SCRIPTS_KEYS = """
adaptive_noise_scale alpha_mask async_upload base_weights base_weights_multiplier bucket_no_upscale bucket_reso_steps
cache_info cache_latents cache_latents_to_disk cache_text_encoder_outputs cache_text_encoder_outputs_to_disk
caption_dropout_every_n_epochs caption_dropout_rate caption_extension caption_extention caption_prefix caption_separator
caption_suffix caption_tag_dropout_rate clip_skip color_aug cond_emb_dim conditioning_data_dir config_file
console_log_file console_log_level console_log_simple cpu_offload_checkpointing dataset_class dataset_config
dataset_repeats ddp_gradient_as_bucket_view ddp_static_graph ddp_timeout debiased_estimation_loss debug_dataset
deepspeed dim_from_weights disable_mmap_load_safetensors dynamo_backend enable_bucket enable_wildcard
face_crop_aug_range flip_aug fp16_master_weights_and_gradients fp8_base fp8_base_unet full_bf16 full_fp16
fused_backward_pass gradient_accumulation_steps gradient_checkpointing highvram huber_c huber_scale huber_schedule
huggingface_path_in_repo huggingface_repo_id huggingface_repo_type huggingface_repo_visibility huggingface_token
in_json initial_epoch initial_step ip_noise_gamma ip_noise_gamma_random_strength keep_tokens keep_tokens_separator
learning_rate log_config log_prefix log_tracker_config log_tracker_name log_with logging_dir loss_type lowram
lr_decay_steps lr_scheduler lr_scheduler_args lr_scheduler_min_lr_ratio lr_scheduler_num_cycles lr_scheduler_power
lr_scheduler_timescale lr_scheduler_type lr_warmup_steps masked_loss max_bucket_reso max_data_loader_n_workers
max_grad_norm max_timestep max_token_length max_train_epochs max_train_steps max_validation_steps mem_eff_attn
metadata_author metadata_description metadata_is_negative_embedding metadata_license metadata_merged_from
metadata_preprocessor metadata_tags metadata_thumbnail metadata_title metadata_trigger_phrase metadata_usage_hint
min_bucket_reso min_snr_gamma min_timestep mixed_precision multires_noise_discount multires_noise_iterations
network_alpha network_args network_dim network_dropout network_module network_train_text_encoder_only
network_train_unet_only network_weights no_half_vae no_metadata noise_offset noise_offset_random_strength
offload_optimizer_device offload_optimizer_nvme_path offload_param_device offload_param_nvme_path optimizer_args
optimizer_type output_config output_dir output_name persistent_data_loader_workers pretrained_model_name_or_path
prior_loss_weight random_crop reg_data_dir resize_interpolation resolution resume resume_from_huggingface
sample_at_first sample_every_n_epochs sample_every_n_steps sample_prompts sample_sampler save_every_n_epochs
save_every_n_steps save_last_n_epochs save_last_n_epochs_state save_last_n_steps save_last_n_steps_state
save_model_as save_n_epoch_ratio save_precision save_state save_state_on_train_end save_state_to_huggingface
scale_v_pred_loss_like_noise_pred scale_weight_norms sdpa secondary_separator seed shuffle_caption skip_cache_check
skip_until_initial_step text_encoder_lr token_warmup_min token_warmup_step tokenizer_cache_dir torch_compile
train_batch_size train_data_dir training_comment unet_lr use_8bit_adam use_lion_optimizer v2 v_parameterization
v_pred_like_loss vae vae_batch_size validate_every_n_epochs validate_every_n_steps validation_seed validation_split
wandb_api_key wandb_run_name weighted_captions xformers zero3_init_flag zero3_save_16bit_model zero_stage
zero_terminal_snr
""".split()


# ---- every key: implemented, inert or refused -----------------------------------------------


def test_every_sd_scripts_key_is_known_and_in_exactly_one_class():
    assert len(SD_SCRIPTS_KEYS) == 197
    fields = set(TrainConfig.__dataclass_fields__)
    assert [k for k in SD_SCRIPTS_KEYS if k not in KNOWN_KEYS] == []
    for key in SD_SCRIPTS_KEYS:
        assert (key in fields) + (key in INERT_KEYS) + (key in REFUSED_KEYS) == 1, key


@pytest.mark.parametrize("key", sorted(REFUSED_KEYS))
def test_each_refused_key_names_itself_and_why_but_its_neutral_value_loads(key):
    neutral, reason = REFUSED_KEYS[key]
    config_from_dict({key: neutral[0]})  # sd-scripts' default: a complete kohya config loads
    value = {bool: True, int: 7, float: 0.5, str: "x", type(None): "x", list: ["x"]}[type(neutral[0])]
    if value in neutral:
        value = "something else"
    with pytest.raises(ValueError, match=rf"{key} = .* is not supported: {re.escape(reason[:20])}"):
        config_from_dict({key: value}, "my.toml")


def test_inert_keys_load_and_save_model_as_other_than_safetensors_is_refused():
    cfg = config_from_dict({"xformers": True, "logging_dir": "logs", "max_data_loader_n_workers": 4, "lowram": True,
                            "save_model_as": "safetensors", "ddp_timeout": 30})
    assert cfg == TrainConfig()  # nothing about the run changed
    with pytest.raises(ValueError, match=r"save_model_as = 'ckpt': files are written as \.safetensors only"):
        config_from_dict({"save_model_as": "ckpt"})


def test_a_typo_suggests_the_right_key():
    with pytest.raises(ValueError, match=r"unknown training option\(s\) learning_rat \(did you mean learning_rate\?\)"):
        config_from_dict({"learning_rat": 1e-4})
    with pytest.raises(ValueError, match=r"save_last_n_step \(did you mean save_last_n_steps\?\)"):
        config_from_dict({"save_last_n_step": 2})
    with pytest.raises(ValueError, match=r"unknown training option\(s\) zzz_qqq$"):  # nothing close: no guess
        config_from_dict({"zzz_qqq": 1})


def test_precision_checks_name_the_option():
    with pytest.raises(ValueError, match="full_fp16 is not supported: .*GradScaler"):
        TrainConfig(full_fp16=True, mixed_precision="fp16")
    with pytest.raises(ValueError, match='full_bf16 needs mixed_precision = "bf16"'):
        TrainConfig(full_bf16=True, mixed_precision="fp16")
    with pytest.raises(ValueError, match="max_token_length must be 75, 150 or 225"):
        TrainConfig(max_token_length=300)
    with pytest.raises(ValueError, match="save_last_n_steps removes step saves: it needs save_every_n_steps"):
        TrainConfig(save_last_n_steps=2)


def test_v2_and_sdxl_must_agree_with_the_model():
    TrainConfig(sdxl=True).check_model_family("sdxl")
    TrainConfig(v2=True).check_model_family("sd2")
    with pytest.raises(ValueError, match="v2 = true, but the model is an SD1.x model.*load an SD2.x checkpoint, or remove v2"):
        config_from_dict({"v2": True}).check_model_family("sd15")
    with pytest.raises(ValueError, match="sdxl = true, but the model is an SD1.x model"):
        TrainConfig(sdxl=True).check_model_family("sd15")


# ---- the implemented options, measured on the tiny SD1.5 model -------------------------------


def _tiny(tiny):
    with torch.inference_mode():
        model, clip = tiny.build_model("sd15", 0), tiny.build_clip("sd15", 0)
        unit_group_norms(model)
    return model, clip


@pytest.fixture(scope="module")
def sd15(tiny):
    model, clip = _tiny(tiny)
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, tm.family)
        text.precompute(ListData(6).captions)
        yield tm, text, clip


def _engine(tm, text, out, adapter=None, data=None, **options):
    cfg = TrainConfig(**{"learning_rate": 1e-3, "max_train_steps": 6, "output_name": "t", **options})
    return TrainingEngine(cfg, tm, text, adapter or TinyAdapter(), data or ListData(), out, no_metadata)


def _matrix_weights(diffusion_model):
    return [m.weight for m in diffusion_model.modules()
            if isinstance(m, comfy.ops.CastWeightBiasOp) and m._parameters.get("weight") is not None and m.weight.ndim >= 2]


def test_fp8_base_stores_the_unet_in_float8_and_still_learns(tiny, tmp_path):
    model, clip = _tiny(tiny)
    originals = [w.detach().clone() for w in _matrix_weights(model.model.diffusion_model)]
    with torch.inference_mode(False), trainable_model(model, "bf16", fp8_base=True) as tm:
        weights = _matrix_weights(tm.diffusion_model)
        assert weights and all(w.dtype == torch.float8_e4m3fn for w in weights)
        fp8_bytes = sum(p.numel() * p.element_size() for p in tm.diffusion_model.parameters())
        bf16_bytes = sum(p.numel() * 2 for p in tm.diffusion_model.parameters())
        assert fp8_bytes / bf16_bytes < 0.52, fp8_bytes / bf16_bytes  # ~half of the same U-Net in bf16
        text = TextConditioner(clip, tm.family)
        data = ListData(n=2, bs=2)
        text.precompute(data.captions)
        adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=4.0, train_text_encoder=False), tm.model_config)
        adapter.attach(tm.diffusion_model, {})
        before = eval_loss(tm, text, data)
        result = _engine(tm, text, tmp_path, adapter, data, learning_rate=1e-2, max_train_steps=8,
                         mixed_precision="bf16", fp8_base=True).run()
        adapter.attach(tm.diffusion_model, {})
        adapter.train(False)
        after = eval_loss(tm, text, data)
        adapter.detach()
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert after < 0.9 * before, (before, after)
    # the graph's model is as it was: float32 weights with their values
    restored = _matrix_weights(model.model.diffusion_model)
    assert len(restored) == len(originals)
    assert all(w.dtype == torch.float32 and torch.equal(w, v) for w, v in zip(restored, originals))


def test_full_bf16_trains_bf16_weights_and_gradients(sd15, tmp_path):
    tm, text, _ = sd15
    tm.compute_dtype = torch.bfloat16  # what trainable_model(mixed_precision="bf16") gives
    try:
        engine = _engine(tm, text, tmp_path, max_train_steps=2, mixed_precision="bf16", full_bf16=True)
        result = engine.run()
        plain = _engine(tm, text, tmp_path / "plain", max_train_steps=2, mixed_precision="bf16")
        plain.run()
    finally:
        tm.compute_dtype = torch.float32
    assert all(torch.isfinite(torch.tensor(result.losses)))
    assert {p.dtype for p in engine.params} == {torch.bfloat16}
    assert all(s["exp_avg"].dtype == torch.bfloat16 for s in engine.optimizer.state.values())
    assert {p.dtype for p in plain.params} == {torch.float32}
    assert any(v.abs().sum() > 0 for k, v in engine.adapter.state_dict().items() if k.endswith(".up"))


def test_no_half_vae_encodes_in_float32_and_leaves_the_vae_as_it_was(tiny):
    vae = tiny.build_vae(0)
    vae.first_stage_model.to(torch.bfloat16)  # what ComfyUI picks for the VAE on a bf16-capable GPU
    vae.vae_dtype = torch.bfloat16
    fmt = tiny.build_model("sd15", 0).model.latent_format
    seen = []
    hook = vae.first_stage_model.encoder.register_forward_pre_hook(lambda m, args: seen.append(args[0].dtype))
    images = torch.rand(1, 3, 64, 64) * 2 - 1
    half = latent_encoder(vae, fmt)(images)
    full = latent_encoder(vae, fmt, no_half_vae=True)(images)
    hook.remove()
    assert seen == [torch.bfloat16, torch.float32]
    assert not torch.equal(half, full)
    assert vae.vae_dtype == torch.bfloat16 and next(vae.first_stage_model.parameters()).dtype == torch.bfloat16


# ---- saving: save_last_n_*, their states, the default of one state ---------------------------


def _names(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir()}


def test_save_last_n_steps_keeps_the_saves_of_the_last_n_steps(sd15, tmp_path):
    tm, text, _ = sd15
    result = _engine(tm, text, tmp_path, save_every_n_steps=1, save_last_n_steps=2).run()
    # sd-scripts' rule: at step 5, saves at steps <= 5 - 2 - 1 go; step 6 is the final file
    kept = {f"t-step{s:08d}" for s in (3, 4, 5)} | {"t"}
    assert _names(tmp_path) == {n + ".safetensors" for n in kept} | {n + "-state.pt" for n in kept}
    assert [p.name for p in result.saved] == [f"t-step{s:08d}.safetensors" for s in (3, 4, 5)] + ["t.safetensors"]


def test_by_default_only_the_newest_state_is_kept(sd15, tmp_path):
    tm, text, _ = sd15
    _engine(tm, text, tmp_path, max_train_steps=4, save_every_n_steps=1).run()
    assert _names(tmp_path) == {f"t-step{s:08d}.safetensors" for s in (1, 2, 3)} | {"t.safetensors", "t-state.pt"}
    (tmp_path / "other-step00000001-state.pt").write_bytes(b"x")  # another run's state is never touched
    _engine(tm, text, tmp_path, max_train_steps=2, save_every_n_steps=1).run()
    assert "other-step00000001-state.pt" in _names(tmp_path)


def test_save_last_n_epochs_and_its_state_variant(sd15, tmp_path):
    tm, text, _ = sd15  # ListData(): 2 batches per epoch, 8 steps = 4 epochs; epoch 4 is the final file
    _engine(tm, text, tmp_path, max_train_steps=8, save_every_n_epochs=1, save_last_n_epochs=2,
            save_last_n_epochs_state=1).run()
    assert _names(tmp_path) == {"t-000002.safetensors", "t-000003.safetensors", "t.safetensors",
                                "t-000003-state.pt", "t-state.pt"}


def test_save_state_on_train_end_without_save_state(sd15, tmp_path):
    tm, text, _ = sd15
    _engine(tm, text, tmp_path, max_train_steps=2, save_every_n_steps=1, save_state=False, save_state_on_train_end=True).run()
    assert _names(tmp_path) == {"t-step00000001.safetensors", "t.safetensors", "t-state.pt"}


# ---- captions: max_token_length and weighted_captions ----------------------------------------


def test_max_token_length_keeps_that_many_77_token_windows_of_captions_only(sd15):
    _, _, clip = sd15
    long = ", ".join(["a very long caption"] * 40)  # 160 words: 3 windows in ComfyUI
    with torch.inference_mode(False):
        shapes = {}
        for cap in (75, 150, 225, None):
            text = TextConditioner(clip, "sd15", max_tokens=cap)
            shapes[cap] = (text.encode([long], "cpu")[0].shape[1], text.encode([long], "cpu", prompts=True)[0].shape[1])
        assert shapes == {75: (77, 231), 150: (154, 231), 225: (231, 231), None: (231, 231)}
        text = TextConditioner(clip, "sd15", max_tokens=75)
        first_window = clip.encode_from_tokens({k: v[:1] for k, v in clip.tokenize(long).items()})
        torch.testing.assert_close(text.encode([long], "cpu")[0], first_window)


def test_weighted_captions_parses_emphasis_only_when_asked(sd15):
    _, _, clip = sd15
    with torch.inference_mode(False):
        plain = TextConditioner(clip, "sd15", caption_weights=False)
        weighted = TextConditioner(clip, "sd15", caption_weights=True)
        caption = "a (red:1.5) cat"
        literal = plain.encode([caption], "cpu")[0]
        emphasis = weighted.encode([caption], "cpu")[0]
        assert not torch.allclose(literal, emphasis)
        torch.testing.assert_close(plain.encode([caption], "cpu", prompts=True)[0], emphasis)  # prompts always weighted
        tokens = clip.tokenize(caption, disable_weights=True)
        assert all(w == 1.0 for window in tokens["l"] for _, w in window)
        torch.testing.assert_close(literal, clip.encode_from_tokens(tokens))


# ---- sample prompts: --ss, refused options and samplers ---------------------------------------


def test_prompt_options_ss_cn_and_unknown():
    assert parse_prompt_line("a cat --ss dpm_2 --s 4").sampler == "dpm_2"
    assert parse_prompt_line("a cat --SS euler --W 256").width == 256  # case-insensitive, as sd-scripts
    assert parse_prompt_line("a cat").sampler is None
    with pytest.raises(ValueError, match="--cn gives a ControlNet guide image"):
        parse_prompt_line("a cat --cn guide.png")
    with pytest.raises(ValueError, match=r"unknown option --xx \(options: --n, --w"):
        parse_prompt_line("a cat --xx 3")
    with pytest.raises(ValueError, match="--g is the guidance of guidance-distilled models"):
        parse_prompt_line("a cat --g 3.5")


def test_ss_picks_the_sampler_of_each_prompt_and_missing_samplers_are_refused(sd15, tiny):
    tm, text, _ = sd15
    vae = tiny.build_vae(0)
    prompts = [parse_prompt_line(line, 64) for line in (
        "a photo of thing 0 --d 1 --s 3 --ss euler", "a photo of thing 0 --d 1 --s 3", "a photo of thing 0 --d 1 --s 3 --ss k_euler_a")]
    renderer = SampleRenderer(tm, vae, prompts, "euler_a", seed=0)
    assert renderer.choices == [("euler", "normal"), ("euler_ancestral", "normal"), ("euler_ancestral", "normal")]
    with torch.inference_mode(False):
        images = renderer.render(0, text)
    assert torch.equal(images[1], images[2])  # same sampler and seed: the same image
    assert not torch.equal(images[0], images[1])  # --ss euler: another sampler ran
    with pytest.raises(ValueError, match=r"sample_sampler: sampler 'pndm': ComfyUI has no PNDM.*Available: .*euler_a.*ipndm"):
        SampleRenderer(tm, vae, prompts[1:2], "pndm")
    with pytest.raises(ValueError, match=r"sample prompt 'a cat': sampler 'dpmsingle': ComfyUI has no singlestep"):
        SampleRenderer(tm, vae, [parse_prompt_line("a cat --ss dpmsingle")], "euler")
    with pytest.raises(ValueError, match=r"unknown sampler 'eulr'"):
        SampleRenderer(tm, vae, [parse_prompt_line("a cat --ss eulr")], "euler")


# ---- dataset keys in a graph node's extra_options -------------------------------------------


def test_dataset_keys_in_extra_options_apply_to_a_copy_of_the_dataset(tmp_path):
    datasets = [DatasetConfig(subsets=[SubsetConfig(image_dir=tmp_path)], resolution=(512, 512))]
    rest, applied = apply_dataset_options(datasets, {"resolution": 256, "flip_aug": True, "caption_prefix": "sks, ",
                                                     "train_batch_size": 2, "learning_rate": 1e-3}, "Train LoRA node")
    assert rest == {"learning_rate": 1e-3}
    assert applied[0].resolution == (256, 256) and applied[0].batch_size == 2
    assert applied[0].subsets[0].flip_aug and applied[0].subsets[0].caption_prefix == "sks, "
    assert datasets[0].resolution == (512, 512) and not datasets[0].subsets[0].flip_aug  # the input is untouched
    with pytest.raises(DatasetError, match="`train_data_dir` cannot apply: the images come from the `dataset` input. "
                                           "Set it on the dataset node"):
        apply_dataset_options(datasets, {"train_data_dir": "x"}, "Train LoRA node")
    in_graph = [DatasetConfig(subsets=[SubsetConfig(items=[])])]
    with pytest.raises(DatasetError, match="`caption_extension` cannot apply: this dataset has no image folder"):
        apply_dataset_options(in_graph, {"caption_extension": ".txt"}, "Train LoRA node")
    with pytest.raises(DatasetError, match="`flip_aug` must be bool, got 1"):
        apply_dataset_options(datasets, {"flip_aug": 1}, "Train LoRA node")
    with pytest.raises(DatasetError, match="resolution.*must be divisible by 8"):
        apply_dataset_options(datasets, {"resolution": 100}, "Train LoRA node")
    rest, _ = apply_dataset_options(datasets, {"flip_agu": True}, "Train LoRA node")
    with pytest.raises(ValueError, match=r"flip_agu \(did you mean flip_aug\?\)"):
        config_from_dict(rest, "Train LoRA node")
