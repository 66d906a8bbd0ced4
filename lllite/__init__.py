"""ControlNet-LLLite: kohya-compatible modules, weight files and the ComfyUI attention patch.
Plain PyTorch plus ComfyUI's model objects; usable without the training package."""
