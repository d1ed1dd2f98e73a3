#!/usr/bin/env bash
# The whole check, as README.md gives it and .ci/run calls it: installs the dev extras into .venv, then lint,
# format, types, import contracts and every test. Run from anywhere; works on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -e '.[dev]'
echo "== ruff check";         .venv/bin/ruff check .
echo "== ruff format --check"; .venv/bin/ruff format --check .
echo "== mypy --strict";      .venv/bin/mypy --strict autoscaler providers policies metrics_sources
echo "== import contracts";   .venv/bin/lint-imports
echo "== pytest";             .venv/bin/python -m pytest -q "$@"
