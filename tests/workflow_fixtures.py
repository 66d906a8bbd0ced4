"""Files the example workflows name, built tiny: `prepare_<workflow name>(models_dir, input_dir, tiny)`
writes them and may return {node_id: {input: value}} overrides (e.g. fewer training steps)."""


def prepare_preprocessors_all(models_dir, input_dir, tiny):
    """Tiny random-weight files under the public names the preprocessor nodes default to;
    detection shrunk so the full-size M-LSD and the others run in seconds on CPU."""
    import tiny_preprocessors

    tiny_preprocessors.write_all(models_dir / "preprocessors")
    return {node: {"detect_resolution": 64} for node in ("16", "18", "20", "22")} | {"24": {"detect_resolution": 56}}


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
