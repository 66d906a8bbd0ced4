"""Files the example workflows name, built tiny: `prepare_<workflow name>(models_dir, input_dir, tiny)`
writes them and may return {node_id: {input: value}} overrides (e.g. fewer training steps)."""


def prepare_preprocessors_all(models_dir, input_dir, tiny):
    """Tiny random-weight files under the public names the preprocessor nodes default to;
    detection shrunk so the full-size M-LSD and the others run in seconds on CPU."""
    import tiny_preprocessors

    tiny_preprocessors.write_all(models_dir / "preprocessors")
    return {node: {"detect_resolution": 64} for node in ("16", "18", "20", "22")} | {"24": {"detect_resolution": 56}}
