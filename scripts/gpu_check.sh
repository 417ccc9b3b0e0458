#!/usr/bin/env bash
# The prepared GPU check (scripts/gpu_check.py): vLLM Model Runner V2 and the classic runner, EM-INF through
# `vllm serve` + vllm_xargs vs the transformers twin, processor cost per decode step at V = 151,936, EM-FT
# vs SFT peak memory; one JSON report. Budget: <= 10 minutes on one H200 (hard limit below).
#
#   bash scripts/gpu_check.sh                         # report: ./gpu_check.json
#   bash scripts/gpu_check.sh --output r.json --model /path/to/qwen2.5-format-model
#   bash scripts/gpu_check.sh --dry-run               # CPU: imports, arguments, model, report writer, plan
#
# Needs a Python with CUDA torch, vllm 0.31-0.32 (the CUDA build) and this repository installed
# (`pip install -e .`, which also registers the `em_inf` vLLM entry point); pick it with PYTHON=...
# GPU_CHECK_TIME_LIMIT (seconds, default 600) bounds the whole run: the Python side gets 30 s less, so it
# can finish its report; `timeout` kills it (and its children) past the limit. The report is rewritten
# after every step, so even a killed run leaves the steps done so far.
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-python3}"
LIMIT="${GPU_CHECK_TIME_LIMIT:-600}"

if ! [[ "$LIMIT" =~ ^[0-9]+$ ]] || [ "$LIMIT" -le 60 ]; then
    echo "gpu_check: GPU_CHECK_TIME_LIMIT must be an integer number of seconds > 60, got '$LIMIT'" >&2
    exit 2
fi
if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "gpu_check: no Python at '$PYTHON' (set PYTHON=...)" >&2
    exit 2
fi
export TOKENIZERS_PARALLELISM=false
# --time-limit first, so a later --time-limit from the caller wins (argparse keeps the last).
timeout --kill-after=15 "$LIMIT" "$PYTHON" "$REPO/scripts/gpu_check.py" --time-limit "$((LIMIT - 30))" "$@"
status=$?
if [ "$status" -eq 124 ] || [ "$status" -eq 137 ]; then
    echo "gpu_check: stopped at the ${LIMIT} s limit; the report holds the steps that finished" >&2
fi
exit "$status"
