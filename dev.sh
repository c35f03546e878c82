#!/usr/bin/env bash
# Sets up a project virtualenv on a fresh machine, then runs the demo or the tests.
#   ./dev.sh demo [args]       set up, then train the bundled toy subject with every method
#   ./dev.sh test [args]       set up, then run the whole test suite (args go to pytest)
#   ./dev.sh test --latest     the canary: a throw-away env with the newest versions the
#                              registry resolves (no tested set), and a fast subset in it
# Installs go through dreambooth_core/constraints.txt, the versions the suite passed with.
set -euo pipefail
cd "$(dirname "$0")"
VENV="${DREAMBOOTH_VENV:-.venv}"
PY="$VENV/bin/python"
TESTED=dreambooth_core/constraints.txt
# torch is pinned here, before anything asks for it: a loose requirement would pull a
# multi-GB CUDA build on a machine that has none.
TORCH="torch==2.13.0"
# The canary's subset: every method trains a few steps on every family, every format round-trips.
CANARY_TESTS=(tests/test_train_methods.py tests/test_lora_format.py tests/test_checkpoint_conversion.py
              tests/test_embeddings.py tests/test_hypernetwork.py tests/test_tested_set.py)

setup() {
  [ -x "$PY" ] || python3 -m venv "$VENV"
  local stamp="$VENV/.dreambooth-core-installed"
  local want
  want="$(cat pyproject.toml "$TESTED" | sha1sum | cut -d' ' -f1)"
  if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then return; fi
  "$PY" -m pip install -q --upgrade pip
  "$PY" -c "import torch" 2>/dev/null || "$PY" -m pip install -q "$TORCH"
  "$PY" -m pip install -q -c "$TESTED" -e ".[test]"
  echo "$want" > "$stamp"
}

canary() {
  local dir
  dir="$(mktemp -d)"
  trap 'rm -rf "$dir"' RETURN
  python3 -m venv "$dir/venv"
  "$dir/venv/bin/python" -m pip install -q --upgrade pip
  "$dir/venv/bin/python" -m pip install -q "$TORCH"
  # everything at its newest but torch, which stays the host's (and a newer one would be a CUDA build)
  echo "$TORCH" > "$dir/torch.txt"
  "$dir/venv/bin/python" -m pip install -q -c "$dir/torch.txt" --upgrade --upgrade-strategy eager ".[test]"
  echo "canary versions (newest the registry resolves):"
  "$dir/venv/bin/python" -c "import importlib.metadata as m; print('  ' + ', '.join(f'{p} {m.version(p)}' for p in
    ('diffusers', 'transformers', 'peft', 'accelerate', 'safetensors', 'huggingface_hub', 'tokenizers', 'torch')))"
  "$dir/venv/bin/python" -m pytest -q -p no:cacheprovider "${CANARY_TESTS[@]}" "$@"
}

cmd="${1:-}"; shift || true
case "$cmd" in
  demo) setup; exec "$VENV/bin/dreambooth-core" demo "$@" ;;
  test)
    if [ "${1:-}" = "--latest" ]; then shift; canary "$@"; exit $?; fi
    setup; exec "$PY" -m pytest "$@" ;;
  *) echo "usage: ./dev.sh demo|test [--latest] [args]" >&2; exit 2 ;;
esac
