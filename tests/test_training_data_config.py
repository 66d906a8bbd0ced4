"""sd-scripts dataset TOML: layering, relative paths, and the errors for bad keys/values."""
from pathlib import Path

import pytest

from lllite_kit.training.data import DatasetError, load_dataset_toml


def _toml(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "cfg" / "dataset.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def test_layers_override_and_paths_resolve_against_the_toml(tmp_path):
    path = _toml(tmp_path, """
[general]
enable_bucket = true
shuffle_caption = true
keep_tokens = 1
caption_extension = '.txt'
flip_aug = true

[[datasets]]
resolution = [768, 512]
batch_size = 4
keep_tokens = 2
bucket_reso_steps = 32

  [[datasets.subsets]]
  image_dir = 'imgs'
  conditioning_data_dir = '../guides'
  num_repeats = 10
  class_tokens = 'sks dog'
  keep_tokens = 3

  [[datasets.subsets]]
  is_reg = true
  image_dir = '/abs/reg'
  class_tokens = 'dog'
  flip_aug = false

[[datasets]]
resolution = 512

  [[datasets.subsets]]
  image_dir = 'second'
""")
    first, second = load_dataset_toml(path)
    assert first.resolution == (768, 512) and first.batch_size == 4 and first.enable_bucket
    assert first.bucket_reso_steps == 32 and first.min_bucket_reso == 256 and first.max_bucket_reso == 1024
    train, reg = first.subsets
    assert train.image_dir == tmp_path / "cfg" / "imgs"
    assert train.conditioning_data_dir.resolve() == (tmp_path / "guides").resolve()
    assert (train.num_repeats, train.class_tokens, train.keep_tokens, train.caption_extension) == (10, "sks dog", 3, ".txt")
    assert train.shuffle_caption and train.flip_aug and not train.is_reg
    assert reg.is_reg and reg.image_dir == Path("/abs/reg") and reg.keep_tokens == 2 and not reg.flip_aug
    assert second.resolution == (512, 512) and second.batch_size == 1 and second.enable_bucket
    assert second.subsets[0].keep_tokens == 1 and second.subsets[0].image_dir == tmp_path / "cfg" / "second"


def test_fallback_is_the_lowest_layer(tmp_path):
    path = _toml(tmp_path, "[general]\nbatch_size = 3\n[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n")
    (ds,) = load_dataset_toml(path, fallback={"resolution": 1024, "batch_size": 8})
    assert ds.resolution == (1024, 1024) and ds.batch_size == 3


def test_metadata_file_subset(tmp_path):
    path = _toml(tmp_path, "[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nmetadata_file = 'md.json'\n")
    (ds,) = load_dataset_toml(path)
    assert ds.subsets[0].metadata_file == tmp_path / "cfg" / "md.json" and ds.subsets[0].image_dir is None


@pytest.mark.parametrize("text, message", [
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeat = 2\n", "unknown key `num_repeat`"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nface_crop_aug_range = [1.0, 2.0]\n", "`face_crop_aug_range` is not supported"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nflip_aug = 1\n", "`flip_aug` must be bool"),
    ("[general]\nimage_dir = 'a'\n[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\n", "[general]: unknown key `image_dir`"),
    ("[[datasets]]\n[[datasets.subsets]]\nimage_dir = 'a'\n", "`resolution` is not set"),
    ("[[datasets]]\nresolution = 'big'\n[[datasets.subsets]]\nimage_dir = 'a'\n", "`resolution` must be int or list"),
    ("[[datasets]]\nresolution = [512, 512, 3]\n[[datasets.subsets]]\nimage_dir = 'a'\n", "[width, height]"),
    ("[[datasets]]\nresolution = 512\n", "has no [[datasets.subsets]]"),
    ("[general]\nresolution = 512\n", "no [[datasets]]"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nnum_repeats = 2\n", "needs `image_dir`"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nnum_repeats = 0\n", "`num_repeats` must be at least 1"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\ncaption_dropout_rate = 1.5\n", "between 0 and 1"),
    ("[[datasets]]\nresolution = 512\nenable_bucket = true\nbucket_reso_steps = 20\n[[datasets.subsets]]\nimage_dir = 'a'\n", "multiple of 8"),
    ("[[datasets]]\nresolution = 512\nenable_bucket = true\nmin_bucket_reso = 100\n[[datasets.subsets]]\nimage_dir = 'a'\n", "divisible by `bucket_reso_steps`"),
    ("[[datasets]]\nresolution = 500\n[[datasets.subsets]]\nimage_dir = 'a'\n", "divisible by 8"),
    ("[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nconditioning_data_dir = 'g'\nrandom_crop = true\n",
     "`random_crop` cannot be used with `conditioning_data_dir`"),
    ("[[datasets]\nresolution = 512\n", "not valid TOML"),
])
def test_bad_config_names_the_problem(tmp_path, text, message):
    path = _toml(tmp_path, text)
    with pytest.raises(DatasetError) as e:
        load_dataset_toml(path)
    assert message in str(e.value)
    assert str(path) in str(e.value)


def test_random_crop_refusal_gives_the_reason(tmp_path):
    path = _toml(tmp_path, "[[datasets]]\nresolution = 512\n[[datasets.subsets]]\nimage_dir = 'a'\nconditioning_data_dir = 'g'\nrandom_crop = true\n")
    with pytest.raises(DatasetError, match="cropped exactly like its image"):
        load_dataset_toml(path)


def test_missing_toml(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_dataset_toml(tmp_path / "nope.toml")
