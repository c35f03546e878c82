#!/usr/bin/env bash
# Sets up a project virtualenv on a fresh machine, then runs the demo or the tests.
#   ./dev.sh demo [args]   set up, then train the bundled toy subject with every method
#   ./dev.sh test [args]   set up, then run the whole test suite (args go to pytest)
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DREAMBOOTH_VENV:-.venv}"
PY="$VENV/bin/python"

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.dreambooth-core-installed"
  local want
  want="$(cat pyproject.toml | sha1sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  "$PY" -m pip install -q --upgrade pip
  # torch is pinned here, before anything asks for it: a loose requirement would
  # pull a multi-GB CUDA build on a machine that has none.
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "torch==2.13.0"
  "$PY" -m pip install -q -e ".[test]"
  echo "$want" > "$stamp"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  demo) setup; exec "$VENV/bin/dreambooth-core" demo "$@" ;;
  test) setup; exec "$PY" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh demo|test [args]" >&2; exit 2 ;;
esac
