"""Anima LoRA: sd-scripts' lora_anima.py targets and names; the saved file loads in core's
LoraLoader with every key applied and gives the prediction the attached adapter gave."""
import pytest
import torch
from safetensors import safe_open

import comfy.model_management
from anima_testing import context
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from lora_helpers import load_in_core, randomize


@pytest.fixture(scope="module")
def anima():
    import tiny_anima

    yield tiny_anima.build_anima(seed=0), tiny_anima.build_anima_clip(seed=0)
    comfy.model_management.unload_all_models()


def _predict(diffusion_model):
    x = torch.randn(1, 16, 1, 8, 8, generator=torch.Generator().manual_seed(11))
    with torch.no_grad():
        return diffusion_model(x, torch.tensor([0.5]), context(3))


def _encode(clip):
    return clip.encode_from_tokens(clip.tokenize("a red circle on a blue square"))


def test_targets_are_sd_scripts_choice(anima):
    model, clip = anima
    adapter = LoRAAdapter(LoRAConfig(train_text_encoder=True), model.model.model_config)
    adapter.attach(model.model.diffusion_model, {"te": clip.cond_stage_model.qwen3_06b})
    try:
        names = set(adapter.modules)
    finally:
        adapter.detach()
    per_block = {f"lora_unet_blocks_0_{p}" for p in (
        "self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj", "self_attn_output_proj",
        "cross_attn_q_proj", "cross_attn_k_proj", "cross_attn_v_proj", "cross_attn_output_proj",
        "mlp_layer1", "mlp_layer2")}
    assert {n for n in names if n.startswith("lora_unet_blocks_0_")} == per_block
    assert len([n for n in names if n.startswith("lora_unet_")]) == 2 * len(per_block)  # 2 blocks; no adaLN, embedders, final layer
    te = {n for n in names if n.startswith("lora_te_layers_0_")}
    assert te == {f"lora_te_layers_0_{p}" for p in ("self_attn_q_proj", "self_attn_k_proj", "self_attn_v_proj",
                                                    "self_attn_o_proj", "mlp_gate_proj", "mlp_up_proj", "mlp_down_proj")}


@pytest.mark.parametrize("train_te", [False, True], ids=["dit", "dit+qwen3"])
def test_saved_file_loads_in_core_with_every_key(anima, train_te, comfy_dirs, caplog):
    model, clip = anima
    dm = model.model.diffusion_model
    base = _predict(dm)
    adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=2.0, train_text_encoder=train_te), model.model.model_config)
    adapter.attach(dm, {"te": clip.cond_stage_model.qwen3_06b} if train_te else {})
    name = f"anima_{'te' if train_te else 'dit'}.safetensors"
    try:
        randomize(adapter, scale=0.3)
        adapter.train(False)
        expected = _predict(dm)
        expected_te = _encode(clip) if train_te else None
        adapter.save(str(comfy_dirs / "models" / "loras" / name), torch.float32, {})
    finally:
        adapter.detach()
    assert (expected - base).abs().max() > 0.05 * base.abs().max()
    with safe_open(str(comfy_dirs / "models" / "loras" / name), "pt") as f:
        meta = f.metadata()
    assert meta["ss_base_model_version"] == "anima" and meta["modelspec.architecture"] == "anima-preview/lora"

    model_lora, clip_lora = load_in_core(model, clip, name, list(adapter.modules), caplog)
    model_lora.patch_model()
    try:
        loaded = _predict(dm)
    finally:
        model_lora.unpatch_model()
    assert ((loaded - expected).abs().max() / expected.abs().max()).item() < 1e-5
    if train_te:
        loaded_te = _encode(clip_lora)
        assert ((loaded_te - expected_te).abs().max() / expected_te.abs().max()).item() < 1e-5


def test_engine_trains_an_anima_lora_that_core_loads(anima, comfy_dirs, caplog):
    """Two steps on the one engine (Anima's flow schedule, Qwen3 + llm_adapter context), the
    DiT and the Qwen3 encoder trained as sd-scripts does without network_train_unet_only; the
    file loads in core's LoraLoader with every key and reproduces the trained prediction and
    the trained encoder's output."""
    import shutil

    from lllite_kit.training.anima.model import trainable_anima
    from lllite_kit.training.anima.text import AnimaTextConditioner
    from lllite_kit.training.config import TrainConfig
    from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData, items_from_tensors
    from lllite_kit.training.engine import TrainingEngine

    model, clip = anima
    images = torch.rand(4, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a disc"))], resolution=(64, 64), batch_size=2)

    def latents(x):  # 16-channel 8x-downscaled stand-in for the (slow on CPU) VAE
        p = torch.nn.functional.avg_pool2d(x, 8)
        return torch.cat([p] * 5 + [p[:, :1]], 1)

    data = TrainingData([dataset], encode_latents=latents, vae_id="avg-pool-8x16", seed=0, size_multiple=32)
    cfg = TrainConfig(max_train_steps=2, learning_rate=5e-2, seed=0, save_precision="float", output_name="anima_lora")
    adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=4.0, train_text_encoder=True), model.model.model_config)
    bare_te = _encode(clip)
    with torch.inference_mode(False), trainable_anima(model) as tm:
        text = AnimaTextConditioner(clip, tm.diffusion_model, trainable=True)
        result = TrainingEngine(cfg, tm, text, adapter, data, comfy_dirs / "anima_lora_run", lambda facts: {}).run()
        adapter.attach(tm.diffusion_model, text.modules())
        adapter.train(False)
        try:
            trained = _predict(tm.diffusion_model)
            trained_te = _encode(text.clip)
        finally:
            adapter.detach()
    assert len(result.losses) == 2 and all(torch.isfinite(torch.tensor(result.losses)))
    shutil.copy(result.final_path, comfy_dirs / "models" / "loras" / "anima_engine.safetensors")
    comfy.model_management.unload_all_models()  # the training clone holds the model loaded
    model_lora, clip_lora = load_in_core(model, clip, "anima_engine.safetensors", list(adapter.modules), caplog)
    assert any(n.startswith("lora_te_layers_") for n in adapter.modules)
    model_lora.patch_model()
    try:
        loaded = _predict(model.model.diffusion_model)
    finally:
        model_lora.unpatch_model()
    bare = _predict(model.model.diffusion_model)
    assert ((loaded - trained).abs().max() / trained.abs().max()).item() < 1e-5
    assert (trained - bare).abs().max() > 0  # the two steps changed the model
    loaded_te = _encode(clip_lora)
    assert ((loaded_te - trained_te).abs().max() / trained_te.abs().max()).item() < 1e-5
    assert (trained_te - bare_te).abs().max() > 1e-4 * bare_te.abs().max()  # and the Qwen3 encoder
