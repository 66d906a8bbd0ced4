"""Anima (circlestone-labs' DiT, Qwen3 text encoder): what training needs beyond the shared code."""
