"""sd-scripts' latent caches (.npz beside the images, written by prepare_buckets_latents.py or
cache_latents_to_disk) reused by the latent cache when they match, encoded otherwise."""
import os

import numpy as np
import torch
from training_data_helpers import CountingEncoder, write_image

from lllite_kit.training.data import DatasetConfig, SubsetConfig, TrainingData
from lllite_kit.training.data.npz_latents import SdScriptsLatents

SCALE = 0.5  # the model's scale factor: sd-scripts stores the VAE's latents before it
NPZ = SdScriptsLatents("_sdxl.npz", lambda x: x * SCALE)


def _save_npz(path, latents, size, flipped=None, **more):
    """The layout of sd-scripts' save_latents_to_disk (strategy_base.py): float32 latents
    (C, h, w) straight from the VAE, original_size (W, H), crop_ltrb, latents_flipped."""
    w, h = size
    arrays = {"latents": latents.numpy(), "original_size": np.array([w, h]), "crop_ltrb": np.array([0, 0, w, h])}
    if flipped is not None:
        arrays["latents_flipped"] = flipped.numpy()
    np.savez(path, **{**arrays, **more})


def _raw(pixels_path, flip=False):
    """What the (fake) VAE gives for the image, unscaled, slightly off as sd-scripts' sampled
    latents and OpenCV resize are."""
    from lllite_kit.training.data.images import load_image

    img = load_image(pixels_path) * 2 - 1
    lat = CountingEncoder()(img.flip(-1)[None] if flip else img[None])[0]
    return lat / SCALE * 1.03


def _data(folder, encoder, **kw):
    subset = SubsetConfig(image_dir=folder, class_tokens="x", **kw)
    # a VAE id of its own: the process-wide memory cache must not answer for the .npz files
    return TrainingData([DatasetConfig(subsets=[subset], resolution=(32, 32))], encode_latents=encoder,
                        vae_id=str(folder), npz_latents=NPZ)


def _latents_of(data, name):
    i = next(k for k, e in enumerate(data._entries) if e.item.source.name == name)
    return data._latents[(i, False)]


def test_matching_npz_files_are_reused_and_the_first_is_checked(tmp_path, caplog):
    images = [write_image(tmp_path / "img" / f"{n}.png", 32, 32, seed=k) for k, n in enumerate("abc")]
    for p in images[:2]:  # prepare_buckets_latents.py's name: <stem>.npz
        _save_npz(p.with_suffix(".npz"), _raw(p), (32, 32), _raw(p, flip=True))
    # today's trainers' name: <stem>_<W>x<H>_sdxl.npz, with an alpha_mask key (not needed here)
    _save_npz(tmp_path / "img" / "c_0032x0032_sdxl.npz", _raw(images[2]), (32, 32), _raw(images[2], flip=True),
              alpha_mask=np.ones((32, 32), np.float32))
    encoder = CountingEncoder()
    data = _data(tmp_path / "img", encoder, flip_aug=True)
    data.prepare()
    assert encoder.images == 1 and data.npz_reused == 5  # 3 images x 2 flips; the first encoded to check the VAE
    for p in images[1:]:
        assert torch.equal(_latents_of(data, p.name), _raw(p) * SCALE)
    assert "caption_extension" not in caplog.text  # an .npz beside an image is not a caption file


def test_npz_files_that_do_not_match_are_encoded(tmp_path):
    first, good, small, other, old, broken = (write_image(tmp_path / "img" / f"{n}.png", 32, 32, seed=k)
                                              for k, n in enumerate("abcdef"))
    for p in (first, good):
        _save_npz(p.with_suffix(".npz"), _raw(p), (32, 32))
    _save_npz(small.with_suffix(".npz"), _raw(small)[:, :2, :2], (32, 32))           # another bucket
    _save_npz(other.with_suffix(".npz"), _raw(other), (64, 64))                      # made from another size
    _save_npz(old.with_suffix(".npz"), _raw(old), (32, 32))
    os.utime(old, (old.stat().st_atime, old.with_suffix(".npz").stat().st_mtime + 10))  # the image changed since
    broken.with_suffix(".npz").write_bytes(b"not a numpy file")                     # unreadable: a warning
    encoder = CountingEncoder()
    data = _data(tmp_path / "img", encoder)
    data.prepare()
    assert data.npz_reused == 1 and encoder.images == 5  # a: encoded to check; b reused; c..f encoded
    assert torch.equal(_latents_of(data, good.name), _raw(good) * SCALE)
    for p in (small, other, old, broken):
        assert not torch.equal(_latents_of(data, p.name), _raw(p) * SCALE)


def test_npz_files_of_another_vae_are_not_used(tmp_path):
    images = [write_image(tmp_path / "img" / f"{n}.png", 32, 32, seed=k) for k, n in enumerate("ab")]
    for p in images:
        _save_npz(p.with_suffix(".npz"), torch.randn(4, 4, 4), (32, 32))
    encoder = CountingEncoder()
    data = _data(tmp_path / "img", encoder)
    data.prepare()
    assert data.npz_reused == 0 and encoder.images == 2
    assert torch.allclose(_latents_of(data, "b.png"), _raw(images[1]) * SCALE / 1.03, atol=1e-6)


def test_metadata_of_prepare_buckets_latents_trains_at_its_train_resolution_and_reuses_its_npz(tmp_path):
    """What sd-scripts' finetune scripts leave: merge_captions_to_metadata.py's caption + tags,
    prepare_buckets_latents.py's train_resolution per entry and <train_data_dir>/<key>.npz."""
    import json

    images = [write_image(tmp_path / "train" / f"{n}.png", 64, 32, seed=k) for k, n in enumerate("ab")]
    meta = {p.stem: {"caption": f"a cat {p.stem}", "tags": "1girl, solo", "train_resolution": [64, 32]} for p in images}
    for p in images:
        _save_npz(p.with_suffix(".npz"), _raw(p), (64, 32))

    def load(metadata, vae_id):
        (tmp_path / "meta_lat.json").write_text(json.dumps(metadata, indent=2))
        subset = SubsetConfig(metadata_file=tmp_path / "meta_lat.json", image_dir=tmp_path / "train")
        encoder = CountingEncoder()
        # a 32x32 square without buckets: only train_resolution can put the images at 64x32
        data = TrainingData([DatasetConfig(subsets=[subset], resolution=(32, 32))], encode_latents=encoder,
                            vae_id=vae_id, npz_latents=NPZ)
        data.prepare()
        return data, encoder

    data, encoder = load(meta, f"{tmp_path}:1")  # a VAE id of its own: the memory cache must not answer
    assert [e.placement.bucket for e in data._entries] == [(64, 32), (64, 32)]
    assert [e.item.caption for e in data._entries] == ["a cat a, 1girl, solo", "a cat b, 1girl, solo"]
    assert data.npz_reused == 1 and encoder.images == 1  # a encoded to check the VAE, b's .npz reused
    assert torch.equal(_latents_of(data, "b.png"), _raw(images[1]) * SCALE)

    del meta["b"]["train_resolution"]  # not on every entry: sd-scripts ignores it, the dataset buckets
    data, encoder = load(meta, f"{tmp_path}:2")
    assert [e.placement.bucket for e in data._entries] == [(32, 32), (32, 32)]
    assert data.npz_reused == 0 and encoder.images == 2
