"""DreamBooth and fine-tuning of the whole model (U-Net, optionally the text encoders) on the one
engine, saved as single-file checkpoints that CheckpointLoaderSimple loads."""
from .adapter import FullModelAdapter
from .blocks import SDXL_BLOCKS, parse_block_lr, sdxl_block_index
from .checkpoint import checkpoint_state_dict, save_checkpoint_file
from .train import FullModelOptions, kept_weights, train_full_model

__all__ = ["SDXL_BLOCKS", "FullModelAdapter", "FullModelOptions", "checkpoint_state_dict", "kept_weights",
           "parse_block_lr", "save_checkpoint_file", "sdxl_block_index", "train_full_model"]
