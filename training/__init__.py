"""Training: datasets, the one training loop, optimizers/schedulers, adapters (LoRA, LLLite), saving."""
