"""The Anima example workflows on the tiny models (imported by workflow_fixtures): Anima's three
loaders become the tiny Anima node (tiny_anima.py), each link re-pointed to the matching output."""

# loader -> the LLLiteKitTest_TinyAnima output (MODEL, CLIP, VAE) that stands in for it
_ANIMA_LOADERS = {"UNETLoader": ("unet_name", 0), "CLIPLoader": ("clip_name", 1), "VAELoader": ("vae_name", 2)}
_ANIMA_NAMES = ("anima", "qwen_3_06b", "qwen_image_vae")


def adapt_anima_loaders(prompt: dict) -> dict:
    outputs = {}
    for node_id, node in prompt.items():
        loader = _ANIMA_LOADERS.get(node["class_type"])
        if loader and any(t in str(node["inputs"].get(loader[0], "")).lower() for t in _ANIMA_NAMES):
            node["class_type"], node["inputs"] = "LLLiteKitTest_TinyAnima", {"seed": 0}
            outputs[node_id] = loader[1]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and value[0] in outputs:
                node["inputs"][name] = [value[0], outputs[value[0]]]
    return prompt


def prepare_anima_lllite_apply(models_dir, input_dir, tiny):
    """A random any-type v2 LLLite for the tiny Anima in models/model_patches under the name of
    kohya's release."""
    import folder_paths
    import tiny_anima
    from anima_testing import random_anima_lllite

    path = models_dir / "model_patches" / "anima-lllite-any-test-like-v2.safetensors"
    path.parent.mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("model_patches", str(path.parent), is_default=True)
    random_anima_lllite(tiny_anima.build_anima(0), path)


def prepare_anima_lllite_synthetic_loop(models_dir, input_dir, tiny):
    """Nothing to write: the graph makes its own data. Six generated 64 px images, 2 training
    steps in fp32, 2 held-out images, one 64 px sample."""
    return {
        "7": {"batch_size": 6},
        "11": {"resolution": 64, "batch_size": 2},
        "13": {"max_train_steps": 2, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 0,
               "mixed_precision": "no", "cond_emb_dim": 8, "network_dim": 8, "sample_every_n_steps": 2,
               "sample_prompts": "1girl, flower field --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_anima_lora_train(models_dir, input_dir, tiny):
    """A two-image sd-scripts folder (`10_sks girl`, .txt captions) under input/; training shrunk
    to 64 px, 2 steps in fp32 and one 64 px sample."""
    import numpy as np
    from PIL import Image

    folder = input_dir / "training" / "anima_lora_example" / "10_sks girl"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * (3 + i)) % 256, (y * 5) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 200 + 300 * i) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"girl_{i}.png")
        (folder / f"girl_{i}.txt").write_text(f"sks girl, pose {i}", encoding="utf-8")
    return {
        "4": {"resolution": 64},
        "5": {"max_train_steps": 2, "save_every_n_steps": 1, "sample_every_n_steps": 2, "lr_warmup_steps": 0,
              "mixed_precision": "no", "sample_prompts": "sks girl --w 64 --h 64 --s 2 --d 1"},
    }
