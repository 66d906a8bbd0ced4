"""Preparing a dataset before training, as kohya users do with sd-scripts' finetune/ and tools/
scripts: caption and tag files (BLIP, GIT, WD14), cleaning and editing them, the fine-tune
metadata JSON, resizing to resolutions, and a look at the result. Plain PyTorch/PIL; the
nodes (nodes/dataset_prep_nodes.py) and scripts/prepare_dataset.py are forms over it."""
