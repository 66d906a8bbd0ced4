#!/usr/bin/env bash
# Command two: set up (if needed) and run the whole test suite. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$PACK_DIR"
set +e
# One pytest-xdist worker per core, whole test files per worker (a file's module fixtures are built
# once). LLLITE_KIT_TEST_WORKERS=0 runs in this process, e.g. for pdb.
COMFYUI_DIR="$COMFYUI_DIR" "$PY" -m pytest -n "${LLLITE_KIT_TEST_WORKERS:-auto}" --dist loadfile "$@"
rc=$?
set -e
# pytest exits 5 when it collected nothing: that is a broken suite, not a pass.
[ "$rc" = 5 ] && echo "test: pytest collected no tests" >&2
exit "$rc"
