#!/usr/bin/env bash
# Run the main job on the embedded demo data (creates/refreshes .venv first).
source "$(dirname "${BASH_SOURCE[0]}")/scripts/venv.sh"
exec python demo.py "$@"
