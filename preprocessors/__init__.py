"""Guide-image preprocessors: classical maps and learned detectors, plain PyTorch."""
