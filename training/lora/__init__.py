"""kohya-compatible LoRA: network (LierLa / C3Lier / DyLoRA), block options, file format."""
from .adapter import LoRAAdapter
from .config import LoRAConfig
from .file import SAVE_PRECISIONS, TRAINING_FACTS, load_lora, save_lora, training_metadata

__all__ = ["LoRAAdapter", "LoRAConfig", "SAVE_PRECISIONS", "TRAINING_FACTS", "load_lora", "save_lora", "training_metadata"]
