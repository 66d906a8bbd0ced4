"""Training data: folder trees, sd-scripts dataset TOML, in-graph lists, bucketing, caching."""
