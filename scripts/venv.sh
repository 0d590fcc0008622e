# Sourced by run_demo.sh and run_tests.sh: create or refresh the project's virtual
# environment in .venv and install the pinned dependencies from pyproject.toml.
# Re-installs only when pyproject.toml changed since the last install.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="$ROOT/.venv"
PY="${PYTHON:-$(command -v python3.11 || command -v python3)}"
if [ ! -x "$VENV/bin/python" ]; then
    echo "[setup] creating virtual environment in $VENV with $PY"
    "$PY" -m venv "$VENV"
fi
# pip's output reduced to one line per package ("[setup] 12 collecting torch==2.13.0 ...")
# plus the final summary; errors pass through whole.
_setup_progress() {
    local n=0 line
    while IFS= read -r line; do
        case "$line" in
            Collecting*|Obtaining*|Processing*) n=$((n + 1)); echo "[setup] $n ${line,}";;
            *Downloading*) line="${line#"${line%%[![:space:]]*}"}"; echo "[setup]   ${line,}";;
            "Installing collected packages"*)
                echo "[setup] unpacking $(( $(tr -cd , <<<"$line" | wc -c) + 1 )) packages into .venv" \
                     "(torch, the largest, is ~750 MB: a minute or more) ...";;
            Successfully*) echo "[setup] done: ${line#Successfully }" | cut -c1-160;;
            *ERROR*|*error*|*Error*) echo "$line" >&2;;
        esac
    done
}
STAMP="$VENV/.installed-$(sha256sum "$ROOT/pyproject.toml" | cut -c1-16)"
if [ ! -f "$STAMP" ]; then
    # The first install takes a while: say what, how big, and show each package as it comes.
    echo "[setup] installing pinned dependencies into .venv (pip install -e .[test]): torch 2.13.0"
    echo "[setup]   CPU build (~750 MB installed), scipy, numpy, OpenCV, onnxruntime, matplotlib and"
    echo "[setup]   the rest, about 1.5 GB in all; 1.5 minutes here from a package cache, more to download"
    "$VENV/bin/python" -m pip install --disable-pip-version-check --progress-bar off \
        -e "$ROOT[test]" 2>&1 | _setup_progress
    rm -f "$VENV"/.installed-*
    touch "$STAMP"
fi
source "$ROOT/scripts/system_deps.sh"
export PATH="$VENV/bin:$PATH"
cd "$ROOT"
