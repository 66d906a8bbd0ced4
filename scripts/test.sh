#!/usr/bin/env bash
# Command two: set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PACK_DIR"
set +e
# The tests run in pytest-xdist workers, whole test files per worker in the suite's own order:
# two where there are two cores or more (on 2 cores, two thirds of one process's time; every
# file also passes run alone). LLLITE_KIT_TEST_WORKERS=N sets the count; 0 runs them in this process.
cores="$(nproc 2>/dev/null || echo 1)"
workers="${LLLITE_KIT_TEST_WORKERS:-$([ "$cores" -ge 2 ] && echo 2 || echo 0)}"
COMFYUI_DIR="$COMFYUI_DIR" "$PY" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
[ "$rc" = 5 ] && echo "test: pytest collected no tests" >&2
exit "$rc"
