"""The Train Full Model node in a real graph: DreamBooth folders with regularization images, a
checkpoint in the checkpoints folder, the difference also as a LoRA, refused options by name."""
import numpy as np
import pytest
import safetensors
from PIL import Image

from graph_runner import GraphError


def _pictures(folder, n):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * (3 + i)) % 256, (y * 5) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 200 + 300 * i) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"p{i}.png")


def _graph(**train):
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "2": {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
            "train_dir": "fm_train", "reg_dir": "fm_reg", "caption_extension": ".txt", "resolution": 64,
            "batch_size": 2, "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0,
            "caption_dropout_rate": 0.0}},
        "3": {"class_type": "LLLiteKit_TrainFullModel", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["2", 0],
            "output_name": "graph_dreambooth", "max_train_steps": 1, "learning_rate": 1e-4,
            "train_text_encoder": True, "learning_rate_te1": 5e-2, "learning_rate_te2": 0.0, "prior_loss_weight": 0.5,
            "block_lr": "", "save_lora_dim": 2,
            "optimizer_type": "AdamW", "optimizer_args": "", "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "mixed_precision": "no", "gradient_checkpointing": True, "gradient_accumulation_steps": 1, "seed": 1,
            "noise_offset": 0.0, "min_snr_gamma": 0.0, "loss_type": "l2", "save_every_n_steps": 0,
            "save_precision": "fp16", "sample_prompts": "", "sample_every_n_steps": 0, "sample_sampler": "euler",
            "if_exists": "overwrite", "extra_options": "", **train}},
    }


@pytest.fixture(scope="module")
def folders(comfy_dirs):
    _pictures(comfy_dirs / "input" / "fm_train" / "2_sks dog", 1)
    _pictures(comfy_dirs / "input" / "fm_reg" / "1_dog", 2)


def test_dreambooth_node_writes_a_checkpoint_and_its_lora(graph, comfy_dirs, folders):
    graph.run(_graph())
    name, _, _, saved = (out[0] for out in graph.node_outputs("3"))
    assert name == "graph_dreambooth.safetensors"
    assert saved.splitlines() == ["graph_dreambooth.safetensors", "graph_dreambooth_lora.safetensors"]
    with safetensors.safe_open(comfy_dirs / "models" / "checkpoints" / name, "pt") as f:
        keys, meta = list(f.keys()), f.metadata()
    assert {k.split(".")[0] for k in keys} == {"model", "cond_stage_model", "first_stage_model"}
    assert meta["ss_num_reg_images"] == "2" and meta["ss_prior_loss_weight"] == "0.5"
    assert meta["modelspec.architecture"] == "stable-diffusion-v1" and meta["ss_train_text_encoder"] == "True"
    with safetensors.safe_open(comfy_dirs / "models" / "loras" / "graph_dreambooth_lora.safetensors", "pt") as f:
        lora_keys = list(f.keys())
    assert any(k.startswith("lora_unet_") for k in lora_keys) and any(k.startswith("lora_te_") for k in lora_keys)


def test_options_the_full_model_trainer_lacks_are_refused_by_name(graph, folders):
    with pytest.raises(GraphError, match="fused_backward_pass cannot clip gradients"):  # the node's max_grad_norm is 1
        graph.run(_graph(extra_options="fused_backward_pass = true"))
    with pytest.raises(GraphError, match="full_bf16 with sample images"):
        graph.run(_graph(extra_options="full_bf16 = true", mixed_precision="bf16", sample_prompts="a dog",
                         sample_every_n_steps=1))
    with pytest.raises(GraphError, match="block_lr is SDXL"):
        graph.run(_graph(block_lr=",".join(["1e-6"] * 23)))
