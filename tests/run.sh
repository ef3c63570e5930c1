#!/usr/bin/env bash
# The test command: set-up (with test dependencies), then the CPU-only test suite.
#   bash tests/run.sh [pytest args]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "$ROOT/tools/env/setup.sh" --dev --mpi  # MPI: the data-parallel test runs 2 processes
bash "$ROOT/tools/env/install_browser.sh" || echo "[tests] Chromium could not be installed: tests/test_studio_browser.py will skip" >&2
cd "$ROOT"
FORCE_CPU=1 exec .venv/bin/python -m pytest -q tests "$@"
