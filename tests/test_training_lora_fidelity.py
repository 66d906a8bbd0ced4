"""A LoRA trained by the engine loads through core's LoraLoader with every key used, and the
loaded model predicts what the model predicted at training time (U-Net and text encoder)."""
import logging

import pytest
import torch

import comfy.model_management
import nodes
from lllite_kit.training.comfy_bridge import TextConditioner, trainable_model
from lllite_kit.training.config import TrainConfig
from lllite_kit.training.engine import TrainingEngine
from lllite_kit.training.lora import LoRAAdapter, LoRAConfig
from training_helpers import ListData, no_metadata, unit_group_norms


def _prediction(tm, text, caption="a photo of thing 0"):
    g = torch.Generator().manual_seed(4)
    x = torch.randn(1, 4, 8, 8, generator=g)
    t = torch.tensor([350])
    with torch.no_grad():
        context, pooled = text.encode([caption], tm.device)
        y = tm.adm(pooled, [(64, 64)], [(0, 0)], [(64, 64)])
        return tm.predict(x, t, context, y), context


@pytest.mark.parametrize("family,train_te", [("sdxl", False), ("sd15", True)], ids=["sdxl-unet", "sd15-unet+te"])
def test_trained_lora_loads_in_core_and_predicts_like_training(family, train_te, tiny, comfy_dirs, caplog):
    with torch.inference_mode():
        model, clip = tiny.build_model(family, 0), tiny.build_clip(family, 0)
        unit_group_norms(model)
    name = f"fidelity_{family}{'_te' if train_te else ''}"
    loras = comfy_dirs / "models" / "loras"
    with torch.inference_mode(False), trainable_model(model) as tm:
        text = TextConditioner(clip, tm.family, trainable=train_te)
        adapter = LoRAAdapter(LoRAConfig(dim=4, alpha=2.0, conv_dim=2, conv_alpha=1.0, train_text_encoder=train_te), tm.model_config)
        cfg = TrainConfig(max_train_steps=2, learning_rate=2e-2, output_name=name, save_precision="float")
        result = TrainingEngine(cfg, tm, text, adapter, ListData(n=2, bs=2), loras, no_metadata).run()
        adapter.save(str(loras / f"{name}_fp16.safetensors"), torch.float16, {})  # the usual save precision

        base_pred, base_context = _prediction(tm, text)
        adapter.attach(tm.diffusion_model, text.modules() if train_te else {})
        adapter.train(False)
        trained_pred, trained_context = _prediction(tm, text)
        adapter.detach()
        text.close()
        assert (trained_pred - base_pred).abs().max() > 1e-2  # training really moved the model
        assert not train_te or (trained_context - base_context).abs().max() > 1e-2

        for file, tol in ((result.final_path.name, 1e-5), (f"{name}_fp16.safetensors", 2e-3)):
            caplog.clear()
            caplog.set_level(logging.WARNING)
            model_lora, clip_lora = nodes.LoraLoader().load_lora(model, clip, file, 1.0, 1.0)
            assert [r.getMessage() for r in caplog.records if "not loaded" in r.getMessage().lower()] == []
            n_te = sum(1 for k in adapter.modules if not k.startswith("lora_unet_"))
            assert len(model_lora.patches) == len(adapter.modules) - n_te and len(clip_lora.patcher.patches) == n_te
            comfy.model_management.load_models_gpu([model_lora], force_full_load=True)  # as KSampler loads it
            loaded_pred, loaded_context = _prediction(tm, TextConditioner(clip_lora, tm.family))
            torch.testing.assert_close(loaded_context, trained_context, rtol=tol, atol=tol)
            torch.testing.assert_close(loaded_pred, trained_pred, rtol=tol, atol=tol)
