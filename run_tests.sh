#!/usr/bin/env bash
# Run Hearth's whole test suite: installs the test tools (requirements-dev.txt, the client sandboxes in
# .clients/, Chromium for the browser tests) if they are missing, then runs pytest. Extra args go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi

# llama-cpp-python (requirements-gguf.txt) has no Linux wheel on PyPI: pip builds it once (~5 minutes on 2 cores),
# portable rather than tuned to this CPU (see requirements-gguf.txt); later installs take pip's cached wheel.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF}"
if ! "$PY" -c "import llama_cpp" 2>/dev/null; then
  echo "run_tests.sh: installing llama-cpp-python for GGUF models (a first build from source takes about 5 minutes)"
fi
"$PY" -m pip install -q --disable-pip-version-check -r requirements-dev.txt

install_target() {  # install_target DIR PACKAGE: a pip --target sandbox, made atomically
  local dir=".clients/$1"
  [ -d "$dir" ] && return 0
  rm -rf "$dir.partial"
  "$PY" -m pip install -q --disable-pip-version-check --target "$dir.partial" "$2"
  mv "$dir.partial" "$dir"
}
mkdir -p .clients
install_target openai-legacy "openai==0.28.1"
install_target shell-gpt "shell-gpt==1.5.1"
install_target takeoff "takeoff-client==0.7.0"  # pins httpx==0.27.0: kept out of the venv
if command -v npm >/dev/null && [ ! -d .clients/node/node_modules/openai ]; then
  rm -rf .clients/node.partial && mkdir -p .clients/node.partial
  (cd .clients/node.partial && npm init -y >/dev/null && npm install --silent --no-audit --no-fund openai@5 >/dev/null)
  rm -rf .clients/node && mv .clients/node.partial .clients/node
fi

if ! command -v chromium >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi

export HEARTH_REQUIRE_CLIENTS=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 GRADIO_ANALYTICS_ENABLED=False
exec "$PY" -m pytest -q "$@"
