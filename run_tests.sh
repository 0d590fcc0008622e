#!/usr/bin/env bash
# Run the test suite (creates/refreshes .venv first). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/scripts/venv.sh"
exec python -m pytest -q "$@"
