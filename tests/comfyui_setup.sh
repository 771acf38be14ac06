#!/usr/bin/env bash
# Prepare a Python environment so that a ComfyUI checkout starts with this pack:
#
#     tests/comfyui_setup.sh /path/to/ComfyUI        (or COMFYUI_PATH=/path/to/ComfyUI tests/comfyui_setup.sh)
#     COMFYUI_PATH=/path/to/ComfyUI python -m pytest tests/test_comfyui_integration.py -v
#
# What it does (idempotent; safe to run again):
#   1. installs ComfyUI's requirements.txt and this pack's requirements.txt into the
#      current python WITHOUT replacing the torch already installed there (torch is pinned
#      to its installed version with a pip constraint, e.g. 2.13.0+cpu);
#   2. installs the torchvision release that matches that torch (0.<minor+15>, e.g.
#      torch 2.13 -> torchvision 0.28). With CVS_TORCH_INDEX_URL set (for example
#      https://download.pytorch.org/whl/cpu) torchvision/torchaudio come from that index
#      with --no-deps, which is how a CPU-only torch gets CPU-only companions;
#   3. if torchvision's compiled ops cannot load against this torch (PyPI's Linux
#      torchvision wheels are CUDA builds; next to a +cpu torch their _C.so misses
#      libc10_cuda.so), `import torchvision` dies with "operator torchvision::nms does not
#      exist" and ComfyUI cannot start (comfy/sd.py imports torchvision). The two
#      unguarded fake-kernel registrations in torchvision/_meta_registrations.py are then
#      made conditional on the ops being loaded, as the other registrations in that file
#      already are. torchvision's Python API (transforms, ...) works; its C++ ops
#      (nms, roi_align, ...) raise "Couldn't load custom C++ ops" if called;
#   4. torchaudio is only installed from CVS_TORCH_INDEX_URL: PyPI has no torchaudio
#      for every torch (none for 2.13) and its wheels are CUDA builds. Without it ComfyUI
#      starts and only logs IMPORT FAILED for its audio nodes (comfy_extras/nodes_audio.py
#      and a few others); this pack does not use audio;
#   5. checks `python main.py --cpu --quick-test-for-ci` exits 0 (skip: CVS_SETUP_NO_CHECK=1);
#   6. for the real-frontend tests: Playwright from PyPI (its own browser download is not
#      used) and Chromium from Debian (`apt-get install chromium`, when run as root on a
#      Debian-like system and no Chromium is on PATH; otherwise it says what to install).
#      CVS_SETUP_NO_BROWSER=1 skips this step.
#
# Environment: PYTHON (default: python), CVS_TORCH_INDEX_URL (optional, see 2.).
# Nothing here starts a server; the check runs main.py --quick-test-for-ci, which exits
# after loading nodes.
set -euo pipefail

COMFYUI_PATH="${1:-${COMFYUI_PATH:-}}"
PYTHON="${PYTHON:-python}"
PACK_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

die() { echo "comfyui_setup: $*" >&2; exit 1; }
say() { echo "comfyui_setup: $*"; }

[ -n "$COMFYUI_PATH" ] || die "give the ComfyUI checkout as first argument or in COMFYUI_PATH"
[ -f "$COMFYUI_PATH/main.py" ] && [ -f "$COMFYUI_PATH/requirements.txt" ] \
    || die "$COMFYUI_PATH does not look like a ComfyUI checkout (no main.py / requirements.txt)"
COMFYUI_PATH="$(cd "$COMFYUI_PATH" && pwd)"
# A source copy without git's empty folders (e.g. ../shared/comfyui-0.3.64) lacks custom_nodes/, and
# main.py lists that folder at start-up.
mkdir -p "$COMFYUI_PATH/custom_nodes"

TORCH_VERSION="$("$PYTHON" -c 'import torch; print(torch.__version__)' 2>/dev/null)" \
    || die "torch is not importable with $PYTHON; install the torch build for this machine first"
TORCH_MINOR="$(echo "$TORCH_VERSION" | sed -E 's/^2\.([0-9]+).*/\1/')"
[[ "$TORCH_MINOR" =~ ^[0-9]+$ ]] || die "unsupported torch version $TORCH_VERSION (expected 2.x)"
TORCHVISION_SERIES="0.$((TORCH_MINOR + 15))"
TORCH_BASE="${TORCH_VERSION%%+*}"
say "keeping torch $TORCH_VERSION; torchvision series $TORCHVISION_SERIES"

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "torch==$TORCH_VERSION" > "$WORK/constraints.txt"
# ComfyUI's requirements without the torch family (handled below).
grep -v -E '^[[:space:]]*(torch|torchvision|torchaudio)[[:space:]]*([<>=!~;#].*)?$' \
    "$COMFYUI_PATH/requirements.txt" > "$WORK/comfyui-requirements.txt"

PIP=("$PYTHON" -m pip install --disable-pip-version-check)

# --- 2. torchvision (and torchaudio) matching the installed torch
if [ -n "${CVS_TORCH_INDEX_URL:-}" ]; then
    say "installing torchvision/torchaudio for torch $TORCH_BASE from $CVS_TORCH_INDEX_URL"
    "${PIP[@]}" --no-deps --index-url "$CVS_TORCH_INDEX_URL" \
        "torchvision==$TORCHVISION_SERIES.*" "torchaudio==$TORCH_BASE"
else
    # Resolved against the torch constraint, so pip never swaps torch for another build.
    "${PIP[@]}" -c "$WORK/constraints.txt" "torchvision==$TORCHVISION_SERIES.*"
fi

# --- 1. ComfyUI's and this pack's requirements (torch pinned)
"${PIP[@]}" -c "$WORK/constraints.txt" -r "$WORK/comfyui-requirements.txt" -r "$PACK_ROOT/requirements.txt"
# Test-only helpers (the integration test uses the websocket when it is there).
"${PIP[@]}" -c "$WORK/constraints.txt" "pytest>=8" websocket-client

# --- 6. the real frontend in headless Chromium
if [ "${CVS_SETUP_NO_BROWSER:-0}" != "1" ]; then
    "${PIP[@]}" -c "$WORK/constraints.txt" "playwright>=1.40"
    if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
            || command -v google-chrome >/dev/null 2>&1 || [ -n "${CVS_CHROMIUM:-}" ]; then
        say "Chromium found for the real-frontend tests"
    elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
        say "installing Chromium (Debian package) for the real-frontend tests"
        apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium
    else
        say "no Chromium on PATH: install it (e.g. apt-get install chromium) or set CVS_CHROMIUM; the" \
            "real-frontend tests fail without it (CVS_NO_BROWSER=1 skips them)"
    fi
fi

# --- 3. torchvision whose compiled ops do not load against this torch
"$PYTHON" - <<'EOF'
import importlib.util
import pathlib
import sys

spec = importlib.util.find_spec("torchvision")
if spec is None:
    sys.exit("comfyui_setup: torchvision is not installed")
meta = pathlib.Path(spec.origin).parent / "_meta_registrations.py"
try:
    import torchvision  # noqa: F401
    print(f"comfyui_setup: torchvision {torchvision.__version__} imports fine")
    sys.exit(0)
except RuntimeError as exc:
    if "torchvision::" not in str(exc):
        raise
    print(f"comfyui_setup: torchvision's C++ ops do not load with this torch ({exc}); "
          f"guarding the fake-kernel registrations in {meta}")
text = meta.read_text()
patched = text
for op in ("nms", "qnms"):
    original = f'@torch.library.register_fake("torchvision::{op}")\n'
    guarded = (f'@(torch.library.register_fake("torchvision::{op}") '
               f'if torchvision.extension._has_ops() else (lambda fn: fn))  # comfyui_setup.sh\n')
    patched = patched.replace(original, guarded)
if patched == text:
    sys.exit(f"comfyui_setup: {meta} has no registration to guard; this torchvision needs another fix")
meta.write_text(patched)
for cached in meta.parent.glob("__pycache__/_meta_registrations.*.pyc"):
    cached.unlink()
EOF
"$PYTHON" -c 'import torchvision, torchvision.transforms; print("comfyui_setup: torchvision", torchvision.__version__, "ok")'
if ! "$PYTHON" -c 'import torchaudio' >/dev/null 2>&1; then
    say "torchaudio is not importable: ComfyUI's audio nodes will log IMPORT FAILED (harmless for this pack)"
fi

# --- 5. ComfyUI starts and loads its nodes
if [ "${CVS_SETUP_NO_CHECK:-0}" != "1" ]; then
    say "checking: (cd $COMFYUI_PATH && $PYTHON main.py --cpu --quick-test-for-ci)"
    # user/temp folders and the database go to a scratch folder, not into the checkout
    mkdir -p "$WORK/user" "$WORK/temp"
    (cd "$COMFYUI_PATH" && "$PYTHON" main.py --cpu --quick-test-for-ci --user-directory "$WORK/user" \
        --temp-directory "$WORK/temp" --database-url "sqlite:///$WORK/comfyui.db") > "$WORK/quick-test.log" 2>&1 \
        || { tail -n 40 "$WORK/quick-test.log" >&2; die "ComfyUI's quick test failed"; }
    grep -E "IMPORT FAILED" "$WORK/quick-test.log" || true
    say "ComfyUI quick test passed"
fi
