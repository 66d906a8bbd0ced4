"""Where the pack may write and read, and how it writes: atomic files (atomic.py), the rule for
output names (names.py), the folders a graph may write to and read from (roots.py)."""
