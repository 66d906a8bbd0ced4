"""The Train Textual Inversion node in a real graph: the embedding lands in the embeddings
folder under the name a prompt uses, samples use the token, a second run resumes."""
import pytest
import safetensors

from training_data_helpers import ring_picture


def _graph(steps: int, if_exists: str = "overwrite", **train):
    return {
        "1": {"class_type": "LLLiteKitTest_TinyCheckpoint", "inputs": {"family": "sdxl", "seed": 0}},
        "2": {"class_type": "LoadImage", "inputs": {"image": "ti_a.png"}},
        "3": {"class_type": "LoadImage", "inputs": {"image": "ti_b.png"}},
        "4": {"class_type": "ImageBatch", "inputs": {"image1": ["2", 0], "image2": ["3", 0]}},
        "5": {"class_type": "LLLiteKit_DatasetFromImages", "inputs": {
            "images": ["4", 0], "captions": "ignored", "num_repeats": 1, "resolution": 64,
            "batch_size": 2, "enable_bucket": False, "flip_aug": False}},
        "6": {"class_type": "LLLiteKit_TrainTextualInversion", "inputs": {
            "model": ["1", 0], "clip": ["1", 1], "vae": ["1", 2], "dataset": ["5", 0],
            "output_name": "graph_ti", "max_train_steps": steps, "learning_rate": 1e-2, "token_string": "sks",
            "init_word": "ring", "num_vectors_per_token": 2, "caption_templates": "object",
            "optimizer_type": "AdamW", "optimizer_args": "", "lr_scheduler": "constant", "lr_warmup_steps": 0,
            "mixed_precision": "no", "gradient_checkpointing": False, "gradient_accumulation_steps": 1, "seed": 1,
            "noise_offset": 0.0, "min_snr_gamma": 0.0, "loss_type": "l2", "save_every_n_steps": 1,
            "save_precision": "float", "sample_prompts": "a photo of sks --w 64 --h 64 --s 2 --d 3",
            "sample_every_n_steps": 2, "sample_sampler": "euler", "if_exists": if_exists, "extra_options": "", **train}},
        "7": {"class_type": "PreviewImage", "inputs": {"images": ["6", 2]}},
    }


@pytest.fixture(scope="module")
def embeddings(comfy_dirs):
    import folder_paths

    folder = comfy_dirs / "models" / "embeddings"
    folder.mkdir(exist_ok=True)
    folder_paths.add_model_folder_path("embeddings", str(folder), is_default=True)
    ring_picture(comfy_dirs / "input" / "ti_a.png", 0)
    ring_picture(comfy_dirs / "input" / "ti_b.png", 90)
    return folder


def test_train_textual_inversion_node_saves_samples_and_resumes(graph, embeddings):
    graph.run(_graph(2))
    name, curve, samples, saved = (out[0] for out in graph.node_outputs("6"))
    assert name == "graph_ti"
    assert set(saved.splitlines()) == {"graph_ti-step00000001.safetensors", "graph_ti.safetensors"}
    with safetensors.safe_open(embeddings / "graph_ti.safetensors", "pt") as f:
        assert sorted(f.keys()) == ["clip_g", "clip_l"] and f.get_tensor("clip_g").shape == (2, 48)
        assert f.metadata()["ss_steps"] == "2" and f.metadata()["modelspec.architecture"].endswith("/textual-inversion")
    assert samples.shape == (1, 64, 64, 3) and samples.std() > 0.01
    texts = [d["text"] for e, d in graph.server.messages if e == "progress_text" and d["node"] == "6"]
    assert not any(t.startswith("caching text") for t in texts)  # the encoders run every step

    graph.run(_graph(3, if_exists="resume", save_every_n_steps=0, sample_every_n_steps=0))
    with safetensors.safe_open(embeddings / "graph_ti.safetensors", "pt") as f:
        assert f.metadata()["ss_steps"] == "3"
