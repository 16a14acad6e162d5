"""Shared fixtures: tiny random-weight models built offline once per test session."""

from __future__ import annotations

import os

# Tests never touch the network. Set before anything imports huggingface_hub or transformers, which
# read these once at import time; the model builders are imported inside the fixtures for the same
# reason (and so collecting tests that need no model stays fast).
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
# Every server a test starts (in-process or `rewardserve serve` subprocesses, which inherit this)
# also serves gRPC; its default port 50051 would collide between tests and between test runs.
os.environ.setdefault("REWARDSERVE_GRPC_PORT", "0")
# The CPU suite means CPU (fp32, the CPU batch strategies) on every host: without this, `device=auto`
# would turn every engine and server built here into a CUDA bf16 one on a GPU host. tests/cuda/ asks
# for device="cuda" explicitly (an explicit setting wins over the environment). Subprocesses inherit it.
os.environ["REWARDSERVE_DEVICE"] = "cpu"

from pathlib import Path
from typing import Literal

import pytest

MULTI_LABELS: dict[int, str] = {0: "helpfulness", 1: "correctness", 2: "safety"}


def _reward_model(
    factory: pytest.TempPathFactory,
    arch: Literal["llama", "qwen2", "qwen3", "mistral", "bert"],
    *,
    num_labels: int = 1,
    id2label: dict[int, str] | None = None,
) -> Path:
    from rewardserve.testing.tiny_models import build_tiny_reward_model

    out_dir = factory.mktemp(f"tiny_{arch}_{num_labels}")
    return build_tiny_reward_model(out_dir, arch, num_labels=num_labels, id2label=id2label)


@pytest.fixture(scope="session")
def tiny_llama(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama reward model, 1 label, GQA (4 heads, 2 kv heads), bpe tokenizer with chat template."""
    return _reward_model(tmp_path_factory, "llama")


@pytest.fixture(scope="session")
def tiny_qwen2(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen2 reward model; AutoTokenizer loads its tokenizer as Qwen2Tokenizer (same ids)."""
    return _reward_model(tmp_path_factory, "qwen2")


@pytest.fixture(scope="session")
def tiny_qwen3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Qwen3 reward model (q/k norms), GQA."""
    return _reward_model(tmp_path_factory, "qwen3")


@pytest.fixture(scope="session")
def tiny_mistral(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Mistral reward model, no sliding window. Same seed as tiny_llama gives the same weights."""
    return _reward_model(tmp_path_factory, "mistral")


@pytest.fixture(scope="session")
def tiny_bert(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """BERT reward model with a wordpiece tokenizer ([CLS] a [SEP] b [SEP]); no chat template."""
    return _reward_model(tmp_path_factory, "bert")


@pytest.fixture(scope="session")
def tiny_multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Llama reward model with 3 labels: helpfulness, correctness, safety."""
    return _reward_model(tmp_path_factory, "llama", num_labels=3, id2label=MULTI_LABELS)


@pytest.fixture(scope="session")
def tiny_policy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """LlamaForCausalLM policy (head_dim 64, loadable by vLLM on CPU) with generation_config.json."""
    from rewardserve.testing.tiny_models import build_tiny_causal_lm

    return build_tiny_causal_lm(tmp_path_factory.mktemp("tiny_policy"))


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked ``cuda`` (tests/cuda/) skip, with the reason, where torch sees no CUDA device."""
    cuda_items = [item for item in items if item.get_closest_marker("cuda") is not None]
    if not cuda_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (torch.cuda.is_available() is false); see README 'GPU'")
    for item in cuda_items:
        item.add_marker(skip)


@pytest.fixture(autouse=True)
def _no_hard_exit_from_in_process_cli(monkeypatch: pytest.MonkeyPatch) -> None:
    """`rewardserve serve` ends with ``os._exit`` when non-daemon threads outlive the drain (a wedged
    forward must not hold the pod past its grace period). Tests that invoke the CLI in-process
    (typer's CliRunner) share the runner's threads, so there it would end pytest itself, with the
    serve's exit code 0 and most of the suite unrun. The real exit path is tested in a subprocess
    (tests/e2e/test_drain.py)."""
    import importlib

    # By module: the package's `serve` attribute is the command function, not the module.
    serve_module = importlib.import_module("rewardserve.cli.serve")
    monkeypatch.setattr(serve_module, "exit_past_wedged_threads", lambda code: None)
