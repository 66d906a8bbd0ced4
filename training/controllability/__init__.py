"""Controllability: how closely generated pictures follow their guide. The same preprocessor
runs on the generated picture, and its map is compared with the guide (metrics.py, the
definitions; maps.py, which preprocessor and metric belong to each kind of guide;
measure.py, per-image and mean scores plus the side-by-side picture)."""
