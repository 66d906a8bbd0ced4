"""The training nodes in a real graph (ComfyUI's validation and executor, inference mode and
all): files and metadata in the loras folder, progress with the loss, samples, loss curve,
resume from the saved state, errors that name the folder."""
import re

import pytest
import safetensors

from graph_runner import GraphError
from training_data_helpers import ring_picture


def _graph(steps: int, if_exists: str = "overwrite", **train):
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sd15", "seed": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "train_a.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "train_b.png"}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["3", 0]}},
        "5": {"class_type": "LLLiteKit_DatasetFromImages", "inputs": {
            "images": ["4", 0], "captions": "a red ring\na blue ring", "num_repeats": 1, "resolution": 64,
            "batch_size": 2, "enable_bucket": False, "flip_aug": False}},
        "6": {"class_type": "LLLiteKit_TrainLoRA", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["5", 0],
            "output_name": "graph_lora", "max_train_steps": steps, "learning_rate": 1e-3, "network_dim": 4,
            "network_alpha": 4.0, "conv_dim": 0, "train_text_encoder": False, "text_encoder_lr": 5e-5,
            "optimizer_type": "AdamW", "optimizer_args": "", "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "mixed_precision": "no", "gradient_checkpointing": True, "gradient_accumulation_steps": 1, "seed": 1,
            "noise_offset": 0.0, "min_snr_gamma": 5.0, "loss_type": "l2", "save_every_n_steps": 1,
            "save_precision": "fp16", "sample_prompts": "a red ring --w 64 --h 64 --s 2 --d 3",
            "sample_every_n_steps": 2, "sample_sampler": "euler", "if_exists": if_exists, "extra_options": "", **train}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }


@pytest.fixture(scope="module")
def images(comfy_dirs):
    ring_picture(comfy_dirs / "input" / "train_a.png", 0)
    ring_picture(comfy_dirs / "input" / "train_b.png", 90)


def test_train_lora_node_in_a_graph(graph, comfy_dirs, images):
    outputs = graph.run(_graph(2))
    name, curve, samples, saved = (out[0] for out in graph.node_outputs("6"))
    loras = comfy_dirs / "models" / "loras"
    assert name == "graph_lora.safetensors"
    assert {"graph_lora.safetensors", "graph_lora-state.pt", "graph_lora-step00000001.safetensors"} <= {p.name for p in loras.iterdir()}
    with safetensors.safe_open(loras / name, "pt") as f:
        meta = f.metadata()
        assert all(k.startswith("lora_unet_") for k in f.keys())
    assert meta["ss_steps"] == "2" and meta["ss_network_dim"] == "4" and meta["ss_base_model_version"] == "sd_v1"
    assert meta["ss_num_train_images"] == "2" and meta["ss_min_snr_gamma"] == "5.0" and meta["ss_seed"] == "1"
    assert meta["modelspec.prediction_type"] == "epsilon" and meta["sshs_model_hash"]
    assert "AdamW" in meta["ss_optimizer"] and meta["ss_lr_scheduler"] == "constant"
    assert curve.shape == (1, 360, 640, 3) and outputs["6"]["images"]
    assert samples.shape == (1, 64, 64, 3) and samples.std() > 0.01
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "6"]
    steps = [t for t in texts if t.startswith("step ")]
    assert steps[-1].startswith("step 2/2  loss ") and float(steps[-1].split()[-1]) > 0
    # every phase shows with its count, in order: latents, text, training, saving, sampling
    assert texts[:3] == ["caching latents 2/2", "caching text 1/2", "caching text 2/2"]
    saves = [t for t in texts if t.startswith("saved ")]
    assert saves[0].startswith("saved graph_lora-step00000001.safetensors (state ") and saves[0].endswith(" MB)")
    assert saves[-1].startswith("saved graph_lora.safetensors (state ")
    assert "sampling 1 image(s) at step 2" in texts
    assert set(saved.splitlines()) == {"graph_lora-step00000001.safetensors", "graph_lora.safetensors"}


def test_train_lora_node_resumes_from_the_last_state(graph, comfy_dirs, images):
    graph.run(_graph(2))
    graph.run(_graph(3, if_exists="resume", save_every_n_steps=0))
    with safetensors.safe_open(comfy_dirs / "models" / "loras" / "graph_lora.safetensors", "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "6"]
    assert [t.split("  ")[0] for t in texts if t.startswith("step ")] == ["step 3/3"]  # only the one remaining step ran


def test_dataset_folder_errors_name_the_folder(graph, comfy_dirs):
    prompt = _graph(1)
    prompt["5"] = {"class_type": "LLLiteKit_DatasetFromFolder", "inputs": {
        "train_dir": "no_such_set", "reg_dir": "", "caption_extension": ".txt", "resolution": 64, "batch_size": 1,
        "enable_bucket": False, "flip_aug": False, "shuffle_caption": False, "keep_tokens": 0, "caption_dropout_rate": 0.0}}
    with pytest.raises(GraphError, match=r"train_dir .*input/no_such_set does not exist"):
        graph.run(prompt)


def test_an_existing_output_name_is_kept_by_default_and_the_new_run_gets_a_numbered_name(graph, comfy_dirs, images):
    graph.run(_graph(1, output_name="keep_me"))
    first = (comfy_dirs / "models" / "loras" / "keep_me.safetensors").read_bytes()
    graph.run(_graph(1, output_name="keep_me", if_exists="new name", learning_rate=5e-3))
    name = graph.node_outputs("6")[0][0]
    assert name == "keep_me_2.safetensors"
    assert (comfy_dirs / "models" / "loras" / "keep_me.safetensors").read_bytes() == first


@pytest.mark.parametrize("name, rule", [
    ("../checkpoints/model", "holds `..`"), ("/tmp/x", "absolute path"), ("a/../../x", "holds `..`"),
    ("", "empty"), (".hidden", "hidden"), ("C:evil", "absolute path"), ("a\x00b", "control character"),
])
def test_bad_output_names_are_refused_before_any_work(graph, comfy_dirs, images, name, rule):
    before = sorted(p.name for p in (comfy_dirs / "models").rglob("*"))
    with pytest.raises(GraphError, match=rule):
        graph.run(_graph(1, output_name=name))
    assert sorted(p.name for p in (comfy_dirs / "models").rglob("*")) == before
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "6"]
    assert not any(t.startswith("step") for t in texts)


@pytest.mark.parametrize("extra", ['output_dir = "/tmp/elsewhere"', 'output_dir = "../../.."'])
def test_an_output_dir_outside_comfyuis_folders_is_refused(graph, images, extra):
    with pytest.raises(GraphError, match="outside ComfyUI's model, output and temp folders"):
        graph.run(_graph(1, extra_options=extra))


@pytest.mark.parametrize("train, reason", [
    ({"lr_scheduler": "cosine", "lr_warmup_steps": 5}, "lr_warmup_steps (5) is not shorter than the run"),
    ({"extra_options": "resolution = 32"}, "resolution 32 is below the 64 px this model's U-Net can take"),
])
def test_options_that_cannot_train_as_expected_are_refused_before_any_work(graph, images, train, reason):
    with pytest.raises(GraphError, match=re.escape(reason)):
        graph.run(_graph(2, **train))
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "6"]
    assert not texts  # refused before latents were encoded


def test_a_batch_larger_than_the_dataset_is_refused(graph, images):
    prompt = _graph(2)
    prompt["5"]["inputs"]["batch_size"] = 3
    with pytest.raises(GraphError, match="batch_size 3 is larger than its 2 training samples per epoch"):
        graph.run(prompt)
