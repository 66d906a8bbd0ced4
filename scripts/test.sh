#!/usr/bin/env bash
# Command two: set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PACK_DIR"
set +e
# One pytest-xdist worker per core, at most 4 (each holds its own torch and ComfyUI, ~1.5 GB);
# whole test files per worker, so a file's module fixtures are built once, each worker taking its
# files in the suite's own (alphabetical) order, as a one-process run does.
# LLLITE_KIT_TEST_WORKERS=0 runs in this process, e.g. for --pdb.
workers="${LLLITE_KIT_TEST_WORKERS:-$(cores="$(nproc 2>/dev/null || echo 1)"; echo $(( cores < 4 ? cores : 4 )))}"
COMFYUI_DIR="$COMFYUI_DIR" "$PY" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
[ "$rc" = 5 ] && echo "test: pytest collected no tests" >&2
exit "$rc"
