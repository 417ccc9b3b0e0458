# The README's two commands: `make demo` and `make test`. Both work on a fresh CPU-only machine.
PYTHON ?= python3
# The CPU build of torch; an unpinned torch would pull a multi-GB CUDA build. The package itself
# only asks for a range, so GPU users keep their own build.
TORCH_PIN ?= torch==2.13.0

.PHONY: install install-dev demo test lint vllm-venv

install:
	$(PYTHON) -m pip install -q "$(TORCH_PIN)"
	$(PYTHON) -m pip install -q -e .

install-dev:
	$(PYTHON) -m pip install -q "$(TORCH_PIN)"
	$(PYTHON) -m pip install -q -e ".[evals,extras,dev]"

demo: install
	$(PYTHON) -m emreason.cli demo --output demo-output

vllm-venv:
	bash scripts/setup_vllm_venv.sh

test: install-dev vllm-venv
	EMREASON_REQUIRE_VLLM=1 $(PYTHON) -m pytest -q

lint:
	ruff check . && ruff format --check $$(git ls-files "*.py")
