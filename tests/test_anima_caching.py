"""Anima text and latents cached as on the SDXL path: frozen Qwen3 outputs encoded once per
caption and the encoder released, latents encoded once per image (the engine's cache), and
sd-scripts' own Anima latent caches (<stem>_<W>x<H>_anima.npz, keys suffixed _<h>x<w>) reused."""
import numpy as np
import pytest
import torch
from training_data_helpers import CountingEncoder, write_image

import comfy.model_management
from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData
from lllite_kit.training.session import ANIMA_NPZ


def _save_anima_npz(path, latents, size):
    """sd-scripts' AnimaLatentsCachingStrategy layout (multi_resolution): every key suffixed with
    the latent size, latents (C, h, w) already normalised."""
    w, h = size
    sfx = f"_{latents.shape[1]}x{latents.shape[2]}"
    np.savez(path, **{"latents" + sfx: latents.numpy(), "original_size" + sfx: np.array([w, h]),
                      "crop_ltrb" + sfx: np.array([0, 0, w, h])})


def _encoded(p):
    from lllite_kit.training.data.images import load_image

    return CountingEncoder()((load_image(p) * 2 - 1)[None])[0] * 1.03  # slightly off, as sd-scripts' resize is


def test_sd_scripts_anima_npz_caches_are_reused(tmp_path):
    a, b, c, d = (write_image(tmp_path / "img" / f"{n}.png", 32, 32, seed=k) for k, n in enumerate("abcd"))
    for p in (a, b):
        _save_anima_npz(p.with_name(f"{p.stem}_0032x0032_anima.npz"), _encoded(p), (32, 32))
    np.savez(c.with_suffix(".npz"), latents=_encoded(c).numpy(), original_size=np.array([32, 32]),  # SD's old name:
             crop_ltrb=np.array([0, 0, 32, 32]))                                                   # not Anima's
    _save_anima_npz(d.with_name("d_0032x0032_anima.npz"), _encoded(d)[:, :2, :2], (32, 32))  # another bucket only
    encoder = CountingEncoder()
    data = TrainingData([DatasetConfig(subsets=[SubsetConfig(image_dir=tmp_path / "img", class_tokens="x")],
                                       resolution=(32, 32))], encode_latents=encoder, vae_id=str(tmp_path), npz_latents=ANIMA_NPZ)
    data.prepare()
    assert data.npz_reused == 1 and encoder.images == 3  # a encoded to check the VAE, b reused, c and d encoded
    i = next(k for k, e in enumerate(data._entries) if e.item.source.name == "b.png")
    assert torch.equal(data._latents[(i, False)], _encoded(b))


@pytest.mark.parametrize("train_te", [False, True], ids=["frozen-qwen3", "trained-qwen3"])
def test_session_caches_text_and_latents(tmp_path, monkeypatch, train_te):
    """Two steps of TrainLoRA's session on the tiny Anima (Wan VAE, Qwen3 CLIP), two pictures of one
    caption: the VAE encodes each picture once; a frozen Qwen3 encodes the caption once and is
    released, a trained one encodes it every step (its LoRA changes the output)."""
    import tiny_anima
    from lllite_kit.training import session
    from lllite_kit.training.anima.text import AnimaTextConditioner
    from lllite_kit.training.config import TrainConfig

    encoded, released = [], []
    encode_one, release = AnimaTextConditioner._encode_one, AnimaTextConditioner.release
    monkeypatch.setattr(AnimaTextConditioner, "_encode_one", lambda self, c: encoded.append(c) or encode_one(self, c))
    monkeypatch.setattr(AnimaTextConditioner, "release", lambda self: released.append(self.clip is not None) or release(self))
    frame = session.frame_latents
    pictures = []
    monkeypatch.setattr(session, "frame_latents", lambda enc: frame(lambda x: pictures.append(x.shape[0]) or enc(x)))
    # pictures of their own: the process-wide latent cache must not answer for them
    images = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(int(train_te) + 100))
    from lllite_kit.training.data import items_from_tensors

    dataset = DatasetConfig(subsets=[SubsetConfig(items=items_from_tensors(images, "a disc"))], resolution=(32, 32),
                            batch_size=1)
    cfg = TrainConfig(max_train_steps=2, seed=0, output_name="anima_cache", network_dim=4,
                      network_train_unet_only=not train_te)
    result = session.train_lora(cfg, tiny_anima.build_anima(0), tiny_anima.build_anima_clip(0), tiny_anima.build_anima_vae(0),
                                [dataset], output_dir=tmp_path / "run")
    comfy.model_management.unload_all_models()
    assert len(result.losses) == 2 and sum(pictures) == 2  # each picture through the VAE once
    assert encoded == (["a disc", "a disc"] if train_te else ["a disc"])
    assert released[:1] == ([] if train_te else [True])  # a frozen encoder leaves once its caption is cached
