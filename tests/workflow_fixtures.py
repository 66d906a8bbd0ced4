"""Example workflows made runnable on the tiny models: `tiny_prompt` converts a shipped UI
workflow as the frontend would queue it, swaps checkpoint loaders for the tiny test
checkpoint and shrinks sizes and step counts; `prepare_<workflow key>(models_dir, input_dir,
tiny)` writes the files a workflow names and may return {node_id: {input: value}} overrides
(e.g. fewer training steps). Used by the tests and by the thumbnail builder."""
from anima_workflow_fixtures import (adapt_anima_loaders, prepare_anima_lllite_apply,  # noqa: F401 (prepare_* by key)
                                      prepare_anima_lllite_synthetic_loop, prepare_anima_lora_train)


def _family(ckpt_name: str) -> str:
    name = ckpt_name.lower()
    return "sd15" if any(t in name for t in ("v1-5", "sd15", "sd_v1", "1.5")) else "sdxl"


def synthetic_image(path, size=64):
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:size, 0:size]
    img = np.stack([x * 4 % 256, y * 4 % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 300) * 255], -1).astype(np.uint8)
    Image.fromarray(img).save(path)


def _adapt_to_tiny(prompt: dict, input_dir) -> dict:
    for node in prompt.values():
        ct, inputs = node["class_type"], node["inputs"]
        if ct == "CheckpointLoaderSimple":
            node["class_type"] = "LLLiteKitTest_TinyCheckpoint"
            # a linked name (a trainer's saved checkpoint) cannot be detected at tiny size: tiny SD1.5
            name = inputs["ckpt_name"]
            node["inputs"] = {"family": _family(name) if isinstance(name, str) else "sd15", "seed": 0}
        elif ct == "LoadImage" and not (input_dir / inputs["image"]).exists():
            synthetic_image(input_dir / inputs["image"])
        elif ct == "EmptyLatentImage":
            inputs.update(width=64, height=64, batch_size=1)
        elif ct in ("KSampler", "KSamplerAdvanced"):
            inputs["steps"] = min(inputs["steps"], 2)
            if "end_at_step" in inputs:
                inputs["end_at_step"] = min(inputs["end_at_step"], 2)
                inputs["start_at_step"] = min(inputs["start_at_step"], 1)
    return adapt_anima_loaders(prompt)


def tiny_prompt(key: str, workflow: dict, comfy_dir, tiny) -> dict:
    """The API prompt of UI `workflow` (example `key`), runnable on the tiny models with the
    ComfyUI folders under `comfy_dir` (models/, input/)."""
    from workflow_format import ui_to_api

    prompt = _adapt_to_tiny(ui_to_api(workflow), comfy_dir / "input")
    prepare = globals().get(f"prepare_{key}")
    overrides = prepare(comfy_dir / "models", comfy_dir / "input", tiny) if prepare else None
    for node_id, values in (overrides or {}).items():
        node = prompt[node_id]
        node["class_type"] = values.pop("class_type", node["class_type"])  # e.g. CONTROLNET_CHECKPOINT
        node["inputs"].update(values)
    return prompt


# An override for a checkpoint loader whose model makes or trains a ControlNet: core's ControlNet
# loader assumes 64 channels per attention head, the plain tiny checkpoints have 16.
CONTROLNET_CHECKPOINT = {"class_type": "LLLiteKitTest_TinyControlNetCheckpoint"}


def prepare_preprocessors_all(models_dir, input_dir, tiny):
    """Tiny random-weight files under the public names the preprocessor nodes default to;
    detection shrunk so the full-size M-LSD and the others run in seconds on CPU."""
    import tiny_preprocessors

    tiny_preprocessors.write_all(models_dir / "preprocessors")
    tiny_preprocessors.write_normal_bae(models_dir / "preprocessors" / "scannet.pt")  # real size: only here
    return {node: {"detect_resolution": 64} for node in ("16", "18", "20", "22", "34", "36")} | {"24": {"detect_resolution": 56}}


def prepare_lora_train(models_dir, input_dir, tiny):
    """A two-image sd-scripts folder tree (`10_sks cat`, .txt captions) under input/; training
    shrunk to 64 px, 2 steps and one 64 px sample."""
    import numpy as np
    from PIL import Image

    folder = input_dir / "training" / "lora_train_example" / "10_sks cat"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(2):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * (3 + i)) % 256, (y * 5) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 200 + 300 * i) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"cat_{i}.png")
        (folder / f"cat_{i}.txt").write_text(f"a photo of sks cat, pose {i}", encoding="utf-8")
    return {
        "2": {"resolution": 64},
        "3": {"max_train_steps": 2, "save_every_n_steps": 1, "sample_every_n_steps": 2, "lr_warmup_steps": 0,
              "sample_prompts": "a photo of sks cat --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_lllite_canny_apply(models_dir, input_dir, tiny):
    """A kohya-format LLLite for the tiny SDXL model under the name of kohya's released canny
    LLLite, in core's controlnet folder (where kohya's README puts it)."""
    from lllite_kit.lllite.weights import save_lllite
    from lllite_testing import random_network

    path = models_dir / "controlnet" / "controllllite_v01032064e_sdxl_canny_anime.safetensors"
    save_lllite(str(path), random_network(tiny.build_model("sdxl", seed=0), "sdxl", name=path.name))


def _shape_pair(i: int, size: int = 64):
    """A picture with a filled disk and its outline (a Canny-like guide), both uint8 RGB."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size]
    d = np.hypot(x - 20 - 6 * i, y - 28 - 3 * i)
    r = 10 + 2 * i
    picture = np.stack([(x * 4) % 256, np.where(d <= r, 255, 40), (y * 4) % 256], -1)
    guide = np.repeat((np.abs(d - r) <= 1.0)[..., None] * 255, 3, -1)
    return picture.astype(np.uint8), guide.astype(np.uint8)


def prepare_lllite_train_folders(models_dir, input_dir, tiny):
    """Four pictures with .txt captions in input/training/lllite_canny/images/1_photos and their
    guides under the same names in .../canny/1_photos; training shrunk to 64 px, 2 steps in
    fp32 (bf16 is slow on CPUs), 2 held-out images and one 64 px sample."""
    from PIL import Image

    images = input_dir / "training" / "lllite_canny" / "images" / "1_photos"
    guides = input_dir / "training" / "lllite_canny" / "canny" / "1_photos"
    images.mkdir(parents=True, exist_ok=True)
    guides.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        picture, guide = _shape_pair(i)
        Image.fromarray(picture).save(images / f"room_{i}.png")
        Image.fromarray(guide).save(guides / f"room_{i}.png")
        (images / f"room_{i}.txt").write_text(f"a photo of a living room, view {i}", encoding="utf-8")
    return {
        "2": {"resolution": 64, "batch_size": 2},
        "5": {"max_train_steps": 2, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 1,
              "mixed_precision": "no", "sample_every_n_steps": 2,
              "sample_prompts": "a photo of a living room --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_lllite_synthetic_loop(models_dir, input_dir, tiny):
    """Nothing to write: the graph makes its own data. Six generated 64 px images, 2 training
    steps in fp32, 2 held-out images, one 64 px sample."""
    return {
        "5": {"batch_size": 6},
        "9": {"resolution": 64, "batch_size": 2},
        "11": {"max_train_steps": 2, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 0,
               "mixed_precision": "no", "sample_every_n_steps": 2, "sample_prompts": "a cozy living room --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_lora_block_weights(models_dir, input_dir, tiny):
    """An SDXL LoRA (U-Net and text encoders, non-zero) for the tiny model as my_lora.safetensors."""
    import torch

    from lora_helpers import attached, randomize

    _, _, adapter = attached(tiny, "sdxl")
    randomize(adapter, scale=0.1)
    adapter.save(str(models_dir / "loras" / "my_lora.safetensors"), torch.float32, {})
    adapter.detach()


def _data_prep_models(models_dir, *kinds: str) -> None:
    """Tiny random tagger and/or BLIP folders under the published names (tiny_data_prep)."""
    import folder_paths
    from tiny_data_prep import tiny_blip, tiny_tagger

    for kind, name, build in (("taggers", "wd-vit-tagger-v3", tiny_tagger),
                              ("captioners", "blip-image-captioning-large", tiny_blip)):
        if kind not in kinds:
            continue
        folder_paths.add_model_folder_path(kind, str(models_dir / kind), is_default=True)
        if not (models_dir / kind / name / "model.safetensors").is_file():
            build(models_dir / kind / name)


def prepare_dataset_synthetic_caption(models_dir, input_dir, tiny):
    """The tiny BLIP folder; two generated 64 px pictures (captions of 2-12 tokens), 2 training
    steps and one 64 px sample."""
    _data_prep_models(models_dir, "captioners")
    return {"4": {"batch_size": 2}, "7": {"max_length": 12, "min_length": 2}, "8": {"resolution": 64},
            "9": {"max_train_steps": 2, "save_every_n_steps": 0, "sample_every_n_steps": 2, "lr_warmup_steps": 0,
                  "sample_prompts": "a watercolor painting of a fox --w 64 --h 64 --s 2 --d 1"}}


def prepare_dataset_prep(models_dir, input_dir, tiny):
    """Four pictures under input/training/dataset_prep_example/ and tiny random tagger and BLIP
    folders; training shrunk to 64 px, 2 steps and one 64 px sample."""
    import numpy as np
    from PIL import Image

    _data_prep_models(models_dir, "taggers", "captioners")
    folder = input_dir / "training" / "dataset_prep_example"
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(4):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * (3 + i)) % 256, (y * 5) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 200 + 300 * i) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"pic_{i}.png")
    return {"2": {"max_length": 12, "min_length": 2}, "5": {"resolution": 64}, "10": {"resolution": 64},
            "11": {"max_train_steps": 2, "save_every_n_steps": 0, "sample_every_n_steps": 2, "lr_warmup_steps": 0,
                   "sample_prompts": "a picture of sks --w 64 --h 64 --s 2 --d 1"}}


def prepare_pose_lllite(models_dir, input_dir, tiny):
    """Tiny DWPose graphs (the detector biased to find people) and a kohya-format LLLite for
    the tiny SDXL model under the name of kohya's released pose LLLite."""
    import tiny_pose
    from lllite_kit.lllite.weights import save_lllite
    from lllite_testing import random_network

    tiny_pose.write_dwpose(models_dir / "preprocessors")
    path = models_dir / "controlnet" / "controllllite_v01032064e_sdxl_pose_anime.safetensors"
    save_lllite(str(path), random_network(tiny.build_model("sdxl", seed=0), "sdxl", name=path.name))
    return {"4": {"detect_resolution": 64}}  # detection at the tiny picture's size


def prepare_controllability_compare(models_dir, input_dir, tiny):
    """The canny LLLite of prepare_lllite_canny_apply and a tiny SDXL ControlNet file core's
    ControlNetLoader reads, under the names the workflow uses."""
    import controlnet_testing

    prepare_lllite_canny_apply(models_dir, input_dir, tiny)
    controlnet_testing.write_controlnet(models_dir / "controlnet" / "controlnet-canny-sdxl-1.0.safetensors",
                                        tiny.build_model("sdxl", seed=0))


def prepare_distill_controlnet(models_dir, input_dir, tiny):
    """The folder dataset of prepare_lllite_train_folders and a tiny SDXL ControlNet; distillation
    shrunk to 64 px, 1 step in fp32, 2 held-out images."""
    import controlnet_testing

    prepare_lllite_train_folders(models_dir, input_dir, tiny)
    controlnet_testing.write_controlnet(models_dir / "controlnet" / "controlnet-canny-sdxl-1.0.safetensors",
                                        tiny.build_model("sdxl", seed=0))
    return {
        "3": {"resolution": 64, "batch_size": 2},
        "4": {"max_train_steps": 1, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 0,
              "mixed_precision": "no", "controllability_images": 1, "controllability_sample_steps": 1},
    }


def _pictures(folder, n: int, stem: str):
    import numpy as np
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        y, x = np.mgrid[0:64, 0:64]
        img = np.stack([(x * (3 + i)) % 256, (y * 5) % 256, ((x - 32) ** 2 + (y - 32) ** 2 < 200 + 300 * i) * 255], -1)
        Image.fromarray(img.astype(np.uint8)).save(folder / f"{stem}_{i}.png")


def prepare_ti_train(models_dir, input_dir, tiny):
    """Two pictures in `10_sks` (object templates, no captions); the embeddings folder under
    models/; training shrunk to 64 px, 2 steps, one 64 px sample."""
    import folder_paths

    (models_dir / "embeddings").mkdir(parents=True, exist_ok=True)
    folder_paths.add_model_folder_path("embeddings", str(models_dir / "embeddings"), is_default=True)
    _pictures(input_dir / "training" / "ti_example" / "10_sks", 2, "toy")
    return {
        "2": {"resolution": 64},
        "3": {"max_train_steps": 2, "save_every_n_steps": 1, "sample_every_n_steps": 2, "mixed_precision": "no",
              "sample_prompts": "a photo of sks --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_full_model_dreambooth(models_dir, input_dir, tiny):
    """Two subject pictures (`20_sks dog`) and two regularization pictures (`1_dog`); training
    shrunk to 64 px, 2 steps, one 64 px sample."""
    _pictures(input_dir / "training" / "dreambooth_example" / "20_sks dog", 2, "dog")
    _pictures(input_dir / "training" / "dreambooth_reg" / "1_dog", 2, "reg")
    return {
        "2": {"resolution": 64},
        "3": {"max_train_steps": 2, "save_every_n_steps": 0, "sample_every_n_steps": 2,
              "sample_prompts": "a photo of sks dog --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_lora_bake_into_checkpoint(models_dir, input_dir, tiny):
    """my_lora.safetensors for the tiny SDXL model, as for the block-weight workflow."""
    prepare_lora_block_weights(models_dir, input_dir, tiny)


def prepare_lora_merge(models_dir, input_dir, tiny):
    """Two SDXL LoRAs of different ranks (U-Net and text encoders, non-zero) for the tiny model."""
    import torch

    from lora_helpers import attached, randomize

    for name, seed, dim in (("style_lora", 1, 4), ("subject_lora", 2, 2)):
        _, _, adapter = attached(tiny, "sdxl", dim=dim)
        randomize(adapter, seed=seed, scale=0.1)
        adapter.save(str(models_dir / "loras" / f"{name}.safetensors"), torch.float32, {})
        adapter.detach()


def prepare_lora_extract(models_dir, input_dir, tiny):
    """The "fine-tune" is the tiny SDXL checkpoint of another seed."""
    return {"2": {"seed": 1}}


def _sd15_controlnet(models_dir, name: str):
    """A tiny SD1.5 ControlNet file (original layout, as core's loader reads it) for the
    CONTROLNET_CHECKPOINT model of seed 0."""
    import controlnet_testing

    controlnet_testing.write_controlnet(models_dir / "controlnet" / name, controlnet_testing.build_model("sd15", seed=0))


def prepare_controlnet_apply_modes(models_dir, input_dir, tiny):
    """A tiny SD1.5 ControlNet under the name of lllyasviel's canny 1.1 (fp16 repackage), and the
    SD1.5 checkpoint it fits."""
    _sd15_controlnet(models_dir, "control_v11p_sd15_canny_fp16.safetensors")
    return {"1": dict(CONTROLNET_CHECKPOINT)}


def prepare_controlnet_train_fill50k(models_dir, input_dir, tiny):
    """Four pictures and their outlines in lllyasviel's Fill50K layout under
    input/training/fill50k (prompt.json, source/, target/) and one outline as the uploaded
    guide; the SD1.5 checkpoint with 64-channel heads; training shrunk to 64 px, 2 steps in fp32,
    2 held-out images and one 64 px sample."""
    import json

    from PIL import Image

    root = input_dir / "training" / "fill50k"
    for sub in ("source", "target"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(4):
        picture, guide = _shape_pair(i)
        Image.fromarray(picture).save(root / "target" / f"{i}.png")
        Image.fromarray(guide).save(root / "source" / f"{i}.png")
        lines.append(json.dumps({"source": f"source/{i}.png", "target": f"target/{i}.png",
                                 "prompt": f"green circle with striped background, view {i}"}))
    (root / "prompt.json").write_text("\n".join(lines) + "\n", encoding="utf-8")
    Image.fromarray(_shape_pair(1)[1]).save(input_dir / "fill50k_guide.png")
    return {
        "1": dict(CONTROLNET_CHECKPOINT),
        "2": {"resolution": 64, "batch_size": 2},
        "4": {"max_train_steps": 2, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 1,
              "mixed_precision": "no", "sample_every_n_steps": 2,
              "sample_prompts": "green circle with striped background --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_controlnet_synthetic_loop(models_dir, input_dir, tiny):
    """The SD1.5 checkpoint with 64-channel heads; four generated 64 px images (2 held out),
    2 training steps in fp32, one 64 px sample."""
    return {
        "1": dict(CONTROLNET_CHECKPOINT),
        "5": {"batch_size": 4},
        "9": {"resolution": 64, "batch_size": 2},
        "11": {"max_train_steps": 2, "heldout_images": 2, "validate_every_n_steps": 0, "save_every_n_steps": 0,
               "mixed_precision": "no", "sample_every_n_steps": 2, "sample_prompts": "a cozy living room --w 64 --h 64 --s 2 --d 1"},
    }


def prepare_controlnet_transfer(models_dir, input_dir, tiny):
    """A tiny SD1.5 ControlNet under the name of lllyasviel's canny 1.0 (converted to safetensors)
    for the base (the SD1.5 checkpoint with 64-channel heads, seed 0); the fine-tune is that
    checkpoint of seed 1."""
    _sd15_controlnet(models_dir, "control_sd15_canny.safetensors")
    return {"1": dict(CONTROLNET_CHECKPOINT), "2": {**CONTROLNET_CHECKPOINT, "family": "sd15", "seed": 1}}
