"""No silent option: every sd-scripts training key is implemented, accepted because it cannot
change the result, or refused with the key and the reason; each implemented precision, saving,
text and sample option changes what the run does, measured."""
import re

import pytest
import torch

from lllite_kit.training.config import INERT_KEYS, KNOWN_KEYS, REFUSED_KEYS, TrainConfig, config_from_dict

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
