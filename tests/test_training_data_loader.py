"""TrainingData: latent cache reuse, deterministic order, resume equivalence, regularization
balance, held-out batches, metadata."""
import json

import pytest
import torch
from training_data_helpers import CountingEncoder, write_image, write_text

from lllite_kit.training.data import DatasetConfig, DatasetError, SubsetConfig, TrainingData, load_dataset_toml, subsets_from_folder_tree
from lllite_kit.training.data.latent_cache import clear_memory


@pytest.fixture(autouse=True)
def _fresh_memory_cache():
    clear_memory()
    yield
    clear_memory()


def _tree(tmp_path, n_train=4, n_reg=0, repeats=2):
    for i in range(n_train):
        write_image(tmp_path / "train" / f"{repeats}_sks dog" / f"t{i}.png", 64 + 8 * (i % 2), 64, seed=i)
    for i in range(n_reg):
        write_image(tmp_path / "reg" / "1_dog" / f"r{i}.png", 64, 64, seed=100 + i)
    return subsets_from_folder_tree(tmp_path / "train", tmp_path / "reg" if n_reg else None, template=SubsetConfig(flip_aug=True, shuffle_caption=True))


def _data(subsets, encoder=None, **kw):
    ds = DatasetConfig(subsets=subsets, resolution=(64, 64), batch_size=kw.pop("batch_size", 2))
    return TrainingData([ds], encode_latents=encoder or CountingEncoder(), vae_id=kw.pop("vae_id", "vae-a"), **kw)


def test_disk_cache_is_reused_by_a_second_loader(tmp_path):
    subsets = _tree(tmp_path)
    first = CountingEncoder()
    data = _data(subsets, first, cache_dir=tmp_path / "cache")
    assert data.prepare() == 8  # 4 images x (plain + flipped)
    assert first.images == 8 and len(list((tmp_path / "cache").glob("*.safetensors"))) == 8
    assert not list((tmp_path / "cache").glob("*.tmp"))
    batch_a = data.next_batch()

    clear_memory()  # a new process: only the disk cache is left
    second = CountingEncoder()
    again = _data(subsets, second, cache_dir=tmp_path / "cache")
    assert again.prepare() == 0 and second.calls == 0
    batch_b = again.next_batch()
    assert torch.equal(batch_a.latents, batch_b.latents) and batch_a.captions == batch_b.captions

    # another VAE, or changed pixels, miss the cache
    other_vae = CountingEncoder()
    assert _data(subsets, other_vae, cache_dir=tmp_path / "cache", vae_id="vae-b").prepare() == 8
    write_image(tmp_path / "train" / "2_sks dog" / "t0.png", 64, 64, seed=999)
    edited = CountingEncoder()
    assert _data(subsets, edited, cache_dir=tmp_path / "cache").prepare() == 2


def test_memory_cache_is_shared_within_the_process(tmp_path):
    subsets = _tree(tmp_path)
    _data(subsets).prepare()
    encoder = CountingEncoder()
    data = _data(subsets, encoder)
    assert data.prepare() == 0 and encoder.calls == 0
    data.next_batch()
    assert encoder.calls == 0


def test_corrupt_disk_entry_is_rewritten(tmp_path):
    subsets = _tree(tmp_path, n_train=1)
    _data(subsets, cache_dir=tmp_path / "cache").prepare()
    for f in (tmp_path / "cache").glob("*.safetensors"):
        f.write_bytes(b"garbage")
    clear_memory()
    assert _data(subsets, cache_dir=tmp_path / "cache").prepare() == 2


def _run(data, steps):
    out = []
    for _ in range(steps):
        b = data.next_batch()
        out.append((b.latents.clone(), list(b.captions), list(b.crop_top_left), list(b.is_reg)))
    return out


def _same(a, b):
    assert len(a) == len(b)
    for (la, ca, xa, ra), (lb, cb, xb, rb) in zip(a, b):
        assert torch.equal(la, lb) and ca == cb and xa == xb and ra == rb


def test_order_is_deterministic_per_seed_and_resume_matches(tmp_path):
    subsets = _tree(tmp_path, n_train=5, n_reg=3)
    full = _data(subsets, seed=7)
    steps = full.steps_per_epoch * 3
    reference = _run(full, steps)
    _same(reference, _run(_data(subsets, seed=7), steps))
    assert [c for _, c, _, _ in reference] != [c for _, c, _, _ in _run(_data(subsets, seed=8), steps)]

    cut = full.steps_per_epoch + 2  # mid-epoch
    first = _data(subsets, seed=7)
    head = _run(first, cut)
    state = first.state_dict()
    assert (state["epoch"], state["position"]) == (1, 2)
    resumed = _data(subsets, seed=7)
    resumed.load_state_dict(state)
    _same(reference, head + _run(resumed, steps - cut))
    # the engine's view: batches(epoch, start) gives the same batches from any starting point
    fresh = _data(subsets, seed=7)
    n = len(fresh)
    from_epoch_1 = [(b.latents, b.captions, b.crop_top_left, b.is_reg) for b in fresh.batches(1, start=2)]
    _same(reference[n + 2 : 2 * n], from_epoch_1)
    with pytest.raises(DatasetError, match="saved with data seed 7, this run uses 8"):
        _data(subsets, seed=8).load_state_dict(state)


def test_epochs_roll_over_and_cover_every_sample(tmp_path):
    subsets = _tree(tmp_path, n_train=3, repeats=3)
    data = _data(subsets, batch_size=2)
    assert data.steps_per_epoch == 5  # 9 samples, one bucket without bucketing
    counts = 0
    for _ in range(data.steps_per_epoch):
        counts += len(data.next_batch().captions)
    assert counts == 9 and (data.epoch, data.position) == (1, 0)


def test_regularization_is_balanced_to_the_train_samples(tmp_path):
    subsets = _tree(tmp_path, n_train=2, n_reg=5, repeats=2)  # 4 train samples, 5 reg images
    data = _data(subsets, batch_size=1)
    regs = [data.next_batch().is_reg[0] for _ in range(data.steps_per_epoch)]
    assert regs.count(False) == 4 and regs.count(True) == 4
    assert data.num_train_images == 4 and data.num_reg_images == 5

    few_reg = _tree(tmp_path / "b", n_train=4, n_reg=1, repeats=2)  # 8 train samples, 1 reg image -> 8 reg samples
    data = _data(few_reg, batch_size=1)
    regs = [data.next_batch().is_reg[0] for _ in range(data.steps_per_epoch)]
    assert regs.count(True) == 8 and regs.count(False) == 8


def test_color_aug_refuses_cached_latents_and_encodes_each_step_without(tmp_path):
    write_image(tmp_path / "img" / "a.png", 64, 64)
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", color_aug=True, num_repeats=4)
    with pytest.raises(DatasetError, match=r"^Subsets whose latents cannot be cached \(1\): .*changes the pixels every step: turn off latent caching.*\n.*\n  - img \(color_aug\)$"):
        _data([subset])
    encoder = CountingEncoder()
    data = _data([subset], encoder, cache_latents=False, batch_size=1)
    assert data.prepare() == 0 and encoder.calls == 0
    latents = [data.next_batch().latents for _ in range(4)]
    assert encoder.calls == 4
    assert all(lat.shape == (1, 4, 8, 8) for lat in latents)


def test_random_crop_moves_the_window_inside_the_resized_image(tmp_path):
    write_image(tmp_path / "img" / "a.png", 128, 64)  # resized 128x64 into 64x64: left in 0..64
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="x", random_crop=True, num_repeats=30)
    data = _data([subset], cache_latents=False, batch_size=30)
    crops = data.next_batch().crop_top_left
    assert all(top == 0 and 0 <= left <= 64 for top, left in crops) and len(set(crops)) > 10


def test_holdout_is_fixed_and_excluded_from_training(tmp_path):
    for i in range(6):
        write_image(tmp_path / "img" / f"{i}.png", 64, 64, seed=i)
        write_text(tmp_path / "img" / f"{i}.caption", f"image {i}, a, b, c")
    subset = SubsetConfig(image_dir=tmp_path / "img", flip_aug=True, shuffle_caption=True, caption_dropout_rate=0.5)
    data = _data([subset], seed=3, holdout=2, batch_size=4)
    held = data.holdout_batches()
    assert sum(len(b.captions) for b in held) == 2
    held_captions = {c.split(",")[0] for b in held for c in b.captions}
    assert all(c.endswith(", a, b, c") for b in held for c in b.captions)  # no shuffle, no dropout
    trained = {c.split(",")[0] for _ in range(data.steps_per_epoch * 4) for c in data.next_batch().captions if c}
    assert trained and not trained & held_captions
    assert all(torch.equal(a.latents, b.latents) for a, b in zip(held, data.holdout_batches()))
    with pytest.raises(DatasetError, match="would leave no training images"):
        _data([subset], holdout=6)


def test_fixed_captions_only_when_nothing_varies(tmp_path):
    write_image(tmp_path / "img" / "a.png", 64, 64)
    write_text(tmp_path / "img" / "a.caption", "a cat")
    write_image(tmp_path / "img" / "b.png", 64, 64, seed=1)
    subset = SubsetConfig(image_dir=tmp_path / "img", class_tokens="sks", caption_prefix="photo of")
    assert _data([subset]).fixed_captions() == ["photo of a cat", "photo of sks"]
    subset.shuffle_caption = True
    assert _data([subset]).fixed_captions() is None


def test_metadata_follows_sd_scripts_keys(tmp_path):
    subsets = _tree(tmp_path, n_train=2, n_reg=1, repeats=3)
    md = _data(subsets).metadata()
    assert md["ss_num_train_images"] == "6" and md["ss_num_reg_images"] == "1"
    datasets = json.loads(md["ss_datasets"])
    assert datasets[0]["subsets"][0]["image_dir"] == "3_sks dog" and datasets[0]["subsets"][1]["is_reg"]
    assert json.loads(md["ss_tag_frequency"])["3_sks dog"] == {"sks dog": 2}
    assert json.loads(md["ss_dataset_dirs"]) == {"3_sks dog": {"n_repeats": 3, "img_count": 2}}
    assert all(isinstance(v, str) for v in md.values())


def test_resume_state_from_another_dataset_is_refused(tmp_path):
    state = _data(_tree(tmp_path, n_train=2)).state_dict()
    with pytest.raises(DatasetError, match="steps per epoch"):
        _data(_tree(tmp_path / "b", n_train=5)).load_state_dict(state)


def test_bad_encoder_output_is_reported(tmp_path):
    subsets = _tree(tmp_path, n_train=1)
    with pytest.raises(ValueError, match=r"encode_latents returned shape \(2, 4, 4, 4\)"):
        _data(subsets, encoder=lambda x: torch.zeros(x.shape[0], 4, 4, 4)).prepare()


def test_toml_end_to_end_with_relative_paths(tmp_path):
    write_image(tmp_path / "set" / "imgs" / "a.png", 96, 40)
    write_text(tmp_path / "set" / "imgs" / "a.txt", "a red ball")
    write_image(tmp_path / "set" / "guides" / "a.png", 96, 40, seed=3)
    toml = write_text(tmp_path / "set" / "dataset.toml", """
[general]
caption_extension = '.txt'
[[datasets]]
resolution = 64
batch_size = 1
enable_bucket = true
bucket_reso_steps = 32
min_bucket_reso = 32
max_bucket_reso = 128
  [[datasets.subsets]]
  image_dir = 'imgs'
  conditioning_data_dir = 'guides'
""")
    data = TrainingData(load_dataset_toml(toml), encode_latents=CountingEncoder(), vae_id="t", size_multiple=32, require_guides=True)
    batch = data.next_batch()
    assert batch.captions == ["a red ball"] and batch.target_sizes == [(32, 96)] and batch.guides.shape == (1, 3, 32, 96)
