"""Files the example workflows name, built tiny: `prepare_<workflow name>(models_dir, input_dir, tiny)`
writes them and may return {node_id: {input: value}} overrides (e.g. fewer training steps)."""
