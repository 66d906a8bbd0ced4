"""Training data: folder trees, sd-scripts dataset TOML, in-graph lists, bucketing, caching.

The engine's entry points (see docs/datasets.md):
- load_dataset_toml(path, fallback) -> [DatasetConfig]     sd-scripts dataset TOML
- subsets_from_folder_tree(train_dir, reg_dir, template)    `<repeats>_<identifier> <class>` folders
- items_from_tensors(images, captions, guides)              in-graph lists (SubsetConfig(items=...))
- TrainingData(datasets, encode_latents=..., vae_id=..., seed=...) -> prepare(), next_batch(),
  holdout_batches(), state_dict()/load_state_dict(), metadata(), fixed_captions()
- DatasetError: every problem with the user's data, naming the files/folders/keys.
"""
from .batch import Batch
from .config import DatasetConfig, SubsetConfig, load_dataset_toml
from .errors import DatasetError
from .folders import subsets_from_folder_tree
from .lists import items_from_tensors
from .loader import TrainingData

__all__ = [
    "Batch", "DatasetConfig", "DatasetError", "SubsetConfig", "TrainingData",
    "items_from_tensors", "load_dataset_toml", "subsets_from_folder_tree",
]
