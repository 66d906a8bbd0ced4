"""Guide images (conditioning_data_dir and in-graph lists): pairing, sizes, identical
resize/crop/flip, and the errors that list the files."""
import shutil

import pytest
import torch
import torch.nn.functional as F
from training_data_helpers import CountingEncoder, write_image

from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData, items_from_tensors
from lllite_kit.training.data.buckets import Bucketer, resize_and_crop
from lllite_kit.training.data.images import load_image
from lllite_kit.training.data.pairing import pair_guides


def _dataset(subsets, **kw):
    kw.setdefault("resolution", (64, 64))
    return DatasetConfig(subsets=subsets, **kw)


def test_missing_and_extra_guides_are_listed(tmp_path):
    images = [write_image(tmp_path / "img" / f"{n}.png", 32, 32) for n in ("a", "b", "c")]
    write_image(tmp_path / "cond" / "a.jpg", 32, 32)
    write_image(tmp_path / "cond" / "zzz.png", 32, 32)
    with pytest.raises(DatasetError) as e:
        pair_guides(images, tmp_path / "cond", str(tmp_path / "img"))
    msg = str(e.value)
    assert msg.startswith("3 dataset problems in 2 groups: Images without a guide image (2); Guide images without an image (1).")
    missing, extra = msg.split("\nGuide images without an image (1): ")
    assert missing.endswith("Images without a guide image (2): put a guide image with the same basename (any image extension) "
                            "in the subset's conditioning_data_dir.\n  - img/b.png\n  - img/c.png")
    assert extra.endswith("\n  - cond/zzz.png")


def test_missing_conditioning_dir(tmp_path):
    img = write_image(tmp_path / "img" / "a.png", 32, 32)
    with pytest.raises(DatasetError, match=r"do not exist \(1\).*\n.*\n  - cond \(conditioning_data_dir, guide images for img\)$"):
        pair_guides([img], tmp_path / "cond", "img")


def test_guide_of_other_size_is_named(tmp_path):
    write_image(tmp_path / "img" / "a.png", 64, 48)
    write_image(tmp_path / "cond" / "a.png", 32, 24)
    subset = SubsetConfig(image_dir=tmp_path / "img", conditioning_data_dir=tmp_path / "cond", class_tokens="x")
    with pytest.raises(DatasetError, match=r"same pixel size as their image \(1\).*\n.*\n  - img/a\.png \(64x48, its guide cond/a\.png is 32x24\)$"):
        TrainingData([_dataset([subset])], encode_latents=CountingEncoder(), vae_id="t")


def _pooled(x):
    return F.avg_pool2d(x, 8)


@pytest.mark.parametrize("cache", [True, False])
def test_guide_is_resized_cropped_and_flipped_exactly_like_its_image(tmp_path, cache):
    # The guide is a copy of the image, so after identical processing the fake VAE's
    # latents (8x8 pooled pixels) equal the pooled guide, flipped or not.
    sizes = [(80, 64), (64, 96), (70, 70)]
    for i, (w, h) in enumerate(sizes):
        write_image(tmp_path / "img" / f"{i}.png", w, h, seed=i)
    shutil.copytree(tmp_path / "img", tmp_path / "cond")
    subset = SubsetConfig(image_dir=tmp_path / "img", conditioning_data_dir=tmp_path / "cond", class_tokens="x", flip_aug=True, num_repeats=4)
    ds = _dataset([subset], batch_size=2, enable_bucket=True, min_bucket_reso=32, max_bucket_reso=128, bucket_reso_steps=32)
    data = TrainingData([ds], encode_latents=CountingEncoder(), vae_id="t", seed=5, cache_latents=cache, require_guides=True)
    bucketer = Bucketer(ds)
    plain = {(h, w): resize_and_crop(load_image(tmp_path / "cond" / f"{i}.png"), bucketer.place((w, h))) * 2 - 1
             for i, (w, h) in enumerate(sizes)}
    flipped = unflipped = 0
    for _ in range(data.steps_per_epoch * 2):
        batch = data.next_batch()
        assert batch.guides.shape[-2:] == tuple(8 * s for s in batch.latents.shape[-2:])
        torch.testing.assert_close(batch.latents[:, :3], _pooled(batch.guides), atol=1e-5, rtol=0)
        for guide, original in zip(batch.guides, batch.original_sizes):
            if torch.equal(guide, plain[original]):
                unflipped += 1
            elif torch.equal(guide, plain[original].flip(-1)):
                flipped += 1
            else:
                raise AssertionError(f"guide of the {original} image is neither its crop nor the mirrored crop")
    assert flipped >= 4 and unflipped >= 4


def test_flipped_crop_top_left_is_mirrored(tmp_path):
    # 101x64 into 64x64: center crop left = 37 // 2 = 18, mirrored 37 - 18 = 19
    write_image(tmp_path / "img" / "a.png", 101, 64)
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", flip_aug=True, num_repeats=20)
    data = TrainingData([_dataset([subset], batch_size=20)], encode_latents=CountingEncoder(), vae_id="t", seed=1)
    assert set(data.next_batch().crop_top_left) == {(0, 18), (0, 19)}


def test_in_graph_lists_with_guides_from_inference_mode(tmp_path):
    with torch.inference_mode():
        images = torch.rand(3, 3, 64, 64)
        guides = torch.rand(3, 3, 64, 64)
    items = items_from_tensors(images, ["one", "two", "three"], guides=guides)
    subset = SubsetConfig(items=items, flip_aug=True)
    data = TrainingData([_dataset([subset], batch_size=3)], encode_latents=CountingEncoder(), vae_id="t", seed=0, require_guides=True)
    batch = data.next_batch()
    assert sorted(batch.captions) == ["one", "three", "two"]
    assert not batch.latents.is_inference() and not batch.guides.is_inference()
    weight = torch.zeros(4, 4, 1, 1, requires_grad=True)
    F.conv2d(batch.latents, weight).sum().backward()  # usable in autograd


def test_in_graph_list_errors():
    images = torch.rand(2, 3, 32, 32)
    with pytest.raises(DatasetError, match="2 images but 3 captions"):
        items_from_tensors(images, ["a", "b", "c"])
    with pytest.raises(DatasetError, match="2 images but 1 guide images"):
        items_from_tensors(images, "a", guides=torch.rand(1, 3, 32, 32))
    with pytest.raises(DatasetError, match=r"images\[1\] has shape \(1, 32, 32\)"):
        items_from_tensors([torch.rand(3, 32, 32), torch.rand(1, 32, 32)], "a")
    with pytest.raises(DatasetError, match=r"\n  - images\[1\] \(32x32, its guide \(in-graph guide\) is 16x16\)$"):
        items_from_tensors([torch.rand(3, 32, 32)] * 2, "a", guides=[torch.rand(3, 32, 32), torch.rand(3, 16, 16)])
    assert [i.caption for i in items_from_tensors([torch.rand(3, 32, 32), torch.rand(2, 3, 40, 32)], "same")] == ["same"] * 3


def test_guides_must_be_on_every_subset(tmp_path):
    write_image(tmp_path / "a" / "x.png", 32, 32)
    write_image(tmp_path / "ca" / "x.png", 32, 32)
    write_image(tmp_path / "b" / "y.png", 32, 32)
    with_guides = SubsetConfig(image_dir=tmp_path / "a", conditioning_data_dir=tmp_path / "ca", class_tokens="x")
    without = SubsetConfig(image_dir=tmp_path / "b", class_tokens="y")
    with pytest.raises(DatasetError, match=r"^Subsets without guide images \(1\): other subsets have guides.*\n.*\n  - b$"):
        TrainingData([_dataset([with_guides, without])], encode_latents=CountingEncoder(), vae_id="t")
    with pytest.raises(DatasetError, match="needs guide images"):
        TrainingData([_dataset([without])], encode_latents=CountingEncoder(), vae_id="t", require_guides=True)


def test_random_crop_with_guides_is_refused_in_code_built_configs(tmp_path):
    subset = SubsetConfig(image_dir=tmp_path, conditioning_data_dir=tmp_path, random_crop=True, class_tokens="x")
    with pytest.raises(DatasetError, match="random_crop.*cannot be used with `conditioning_data_dir`"):
        TrainingData([_dataset([subset])], encode_latents=CountingEncoder(), vae_id="t")
