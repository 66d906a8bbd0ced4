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
