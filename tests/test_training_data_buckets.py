"""Aspect-ratio buckets: the resolution set, which bucket an image gets, resize + crop."""
import pytest
import torch
from training_data_helpers import CountingEncoder, write_image

from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData
from lllite_kit.training.data.buckets import Bucketer, Placement, make_bucket_resolutions, resize_and_crop


@pytest.mark.parametrize("steps", [64, 32])
def test_resolutions_stay_within_area_on_the_step_grid(steps):
    resos = make_bucket_resolutions((1024, 1024), 512, 2048, steps)
    assert (1024, 1024) in resos
    for w, h in resos:
        assert w * h <= 1024 * 1024 and w % steps == 0 and h % steps == 0
        assert 512 <= w <= 2048 and 512 <= h <= 2048
        assert (h, w) in resos
    # each width keeps the tallest stepped height that fits the area
    assert (512, 2048) in resos and (640, (1024 * 1024 // 640) // steps * steps) in resos
    assert len(make_bucket_resolutions((1024, 1024), 512, 2048, 32)) > len(make_bucket_resolutions((1024, 1024), 512, 2048, 64))


def test_closest_aspect_bucket_covering_resize_and_center_crop():
    ds = DatasetConfig(resolution=(64, 64), enable_bucket=True, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    b = Bucketer(ds)
    assert b.resolutions == [(32, 96), (32, 128), (64, 64), (96, 32), (128, 32)]
    assert b.place((300, 100)) == Placement(bucket=(96, 32), resized=(96, 32), crop=(0, 0))
    assert b.place((100, 90)) == Placement(bucket=(64, 64), resized=(71, 64), crop=(3, 0))
    assert b.place((40, 140)) == Placement(bucket=(32, 128), resized=(37, 128), crop=(2, 0))


def test_without_buckets_every_image_fills_the_resolution():
    b = Bucketer(DatasetConfig(resolution=(64, 48)))
    assert b.place((200, 100)) == Placement(bucket=(64, 48), resized=(96, 48), crop=(16, 0))
    assert b.place((32, 32)) == Placement(bucket=(64, 48), resized=(64, 64), crop=(0, 8))


def test_no_upscale_keeps_small_images_and_shrinks_large_ones():
    b = Bucketer(DatasetConfig(resolution=(64, 64), enable_bucket=True, bucket_no_upscale=True, bucket_reso_steps=16, min_bucket_reso=16, max_bucket_reso=128))
    assert b.place((50, 40)) == Placement(bucket=(48, 32), resized=(50, 40), crop=(1, 4))
    big = b.place((200, 100))
    assert big.bucket[0] * big.bucket[1] <= 64 * 64 and big.bucket[0] % 16 == 0 and big.bucket[1] % 16 == 0
    assert big.resized[0] >= big.bucket[0] and big.resized[1] >= big.bucket[1]
    assert abs(big.resized[0] / big.resized[1] - 2) < 0.05


def test_resize_and_crop_takes_the_window():
    image = torch.arange(3 * 10 * 20, dtype=torch.float32).reshape(3, 10, 20) / 600
    p = Placement(bucket=(12, 10), resized=(20, 10), crop=(4, 0))
    out = resize_and_crop(image, p)
    assert out.shape == (3, 10, 12) and torch.equal(out, image[:, :, 4:16])
    assert torch.equal(resize_and_crop(image, p, crop=(8, 0)), image[:, :, 8:20])
    half = resize_and_crop(image, Placement(bucket=(10, 4), resized=(10, 5), crop=(0, 0)))
    assert half.shape == (3, 4, 10) and 0 <= half.min() and half.max() <= 1


def _loader(tmp_path, ds, **kw):
    return TrainingData([ds], encode_latents=CountingEncoder(), vae_id="test", **kw)


def test_batches_hold_one_bucket_and_record_sizes(tmp_path):
    d = tmp_path / "imgs"
    for i, (w, h) in enumerate([(64, 64), (66, 60), (96, 32), (100, 30), (32, 96)]):
        write_image(d / f"{i}.png", w, h, seed=i)
    ds = DatasetConfig(subsets=[SubsetConfig(image_dir=d, class_tokens="x")], resolution=(64, 64), batch_size=2,
                       enable_bucket=True, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    data = _loader(tmp_path, ds, seed=3)
    assert data.steps_per_epoch == 3  # buckets 64x64 (2 images), 96x32 (2), 32x96 (1)
    seen = []
    for _ in range(3):
        batch = data.next_batch()
        (th, tw), = set(batch.target_sizes)
        assert batch.latents.shape[-2:] == (th // 8, tw // 8)
        for orig, crop in zip(batch.original_sizes, batch.crop_top_left):
            seen.append((orig, (th, tw), crop))
    assert sorted(seen) == sorted([
        ((64, 64), (64, 64), (0, 0)), ((60, 66), (64, 64), (0, 3)), ((32, 96), (32, 96), (0, 0)),
        ((30, 100), (32, 96), (0, 5)), ((96, 32), (96, 32), (0, 0)),
    ])


def test_too_small_images_with_no_upscale_are_named(tmp_path):
    d = tmp_path / "imgs"
    write_image(d / "ok.png", 64, 64)
    write_image(d / "tiny.png", 20, 80)
    ds = DatasetConfig(subsets=[SubsetConfig(image_dir=d, class_tokens="x")], resolution=(64, 64), enable_bucket=True,
                       bucket_no_upscale=True, bucket_reso_steps=32, min_bucket_reso=32, max_bucket_reso=128)
    with pytest.raises(DatasetError) as e:
        _loader(tmp_path, ds)
    assert str(e.value).endswith("bucket_no_upscale on (1): no bucket fits them: enlarge them, or turn bucket_no_upscale off.\n"
                                 f"Paths below are relative to {d}\n  - tiny.png (20x80, bucket_reso_steps 32 px)")


def test_size_multiple_refuses_buckets_off_the_grid(tmp_path):
    d = tmp_path / "imgs"
    write_image(d / "a.png", 64, 64)
    ds = DatasetConfig(subsets=[SubsetConfig(image_dir=d, class_tokens="x")], resolution=(72, 72))
    with pytest.raises(DatasetError, match=r"multiples of 32.*\n.*dataset #1: 72x72"):
        _loader(tmp_path, ds, size_multiple=32)
    assert _loader(tmp_path, ds, size_multiple=8).steps_per_epoch == 1
