#!/usr/bin/env bash
# Command two: set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PACK_DIR"
set +e
# LLLITE_KIT_TEST_WORKERS=N runs the tests in N pytest-xdist workers (whole test files per
# worker, in the suite's own order); 0, the default, in this process. Two workers on 2 cores:
# 13 min instead of 21, but the suite's files still share folders between them in one process
# (two order-dependent tests were found and fixed), so one process stays the default until a
# run of every file order is clean.
workers="${LLLITE_KIT_TEST_WORKERS:-0}"
COMFYUI_DIR="$COMFYUI_DIR" "$PY" -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
[ "$rc" = 5 ] && echo "test: pytest collected no tests" >&2
exit "$rc"
