"""Issue 15 over a real server (HTTP and gRPC, one process): labels on every input shape reaching a
user function in its worker, typed failures masking only their input, /get_reward's mask, slime's
/v1/reward with slime's own request body, group advantages, composites of a function and a model,
/v1/models kinds, the client and the results metric."""

from __future__ import annotations

import json
import math
import statistics
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from rewardserve._proto.rewardserve.v1 import reward_pb2 as pb
from rewardserve._proto.rewardserve.v1 import reward_pb2_grpc as pb_grpc
from rewardserve.client import RewardClient
from rewardserve.config import Settings
from rewardserve.testing.server_thread import ServerThread

USER = textwrap.dedent(
    """
    import time

    def behave(*, prompt, response, label, metadata, **kwargs):
        if response == "sleep":
            while True:
                time.sleep(1)
        if response == "boom":
            raise ValueError("cannot score " + response)
        if response == "echo":
            return {"score": 1.0, "label_seen": label, "metadata_seen": metadata, "prompt_seen": prompt}
        return float(len(response))
    """
)
LABEL = {"answer": "42", "tests": [1, 2, {"x": None}]}


@pytest.fixture(scope="module")
def srv(tiny_llama: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    d = tmp_path_factory.mktemp("issue15")
    (d / "my_rewards.py").write_text(USER)
    (d / "rewards.yaml").write_text(
        textwrap.dedent(
            f"""
            models:
              - name: rm
                path: {tiny_llama}
                max_input_tokens: 256
            functions:
              - name: user
                target: my_rewards.py:behave
                timeout_s: 2
                workers: 2
              - name: math
                workers: 1
            composites:
              - name: mix
                weights: {{user: 1.0, rm: 0.5}}
            """
        )
    )
    with ServerThread(Settings(config=d / "rewards.yaml", port=0, grpc_port=0), preload=False) as s:
        deadline = time.monotonic() + 300
        while httpx.get(f"{s.http_url}/health/ready").status_code != 200:
            assert s.server.runtime.load_error is None, s.server.runtime.load_error
            assert time.monotonic() < deadline, "server not ready"
            time.sleep(0.2)
        yield s


def _score(srv: ServerThread, body: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{srv.http_url}/v1/score", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def _grpc_score(srv: ServerThread, request: pb.ScoreRequest) -> pb.ScoreResponse:
    with grpc.insecure_channel(srv.grpc_target) as channel:
        response: pb.ScoreResponse = pb_grpc.RewardServiceStub(channel).Score(request, timeout=60)
        return response


def test_label_and_metadata_reach_the_function_on_every_input_shape(srv: ServerThread) -> None:
    chat = [{"role": "user", "content": "q?"}, {"role": "assistant", "content": "echo"}]
    inputs = [
        {"prompt": "p", "response": "echo", "label": LABEL, "metadata": {"src": "a"}},
        {"messages": chat, "label": [1, "two"], "metadata": 3},
        {"text": "echo", "label": "plain", "group": "g"},
    ]
    body = _score(srv, {"model": "user", "inputs": inputs})
    assert body["model"] == "user" and body["scores"] == [1.0, 1.0, 1.0]
    extras = [d["extras"] for d in body["details"]]
    assert [e["label_seen"] for e in extras] == [LABEL, [1, "two"], "plain"]
    assert [e["metadata_seen"] for e in extras] == [{"src": "a"}, 3, None]
    assert extras[1]["prompt_seen"] == chat[:1] and extras[0]["prompt_seen"] == "p"
    assert all(d["status"] == "ok" and d["mask"] is False for d in body["details"])
    # The same through gRPC: label and metadata as JSON text.
    req = pb.ScoreRequest(
        model="user",
        inputs=[
            pb.Input(prompt="p", response="echo", label_json=json.dumps(LABEL), metadata_json='{"k": 1}'),
            pb.Input(
                messages=[pb.ChatMessage(role=m["role"], content=m["content"]) for m in chat],
                label_json="[1]",
            ),
            pb.Input(text="echo", label_json='"t"'),
        ],
    )
    got = _grpc_score(srv, req)
    seen = [json.loads(d.extras_json) for d in got.details]
    assert [s["label_seen"] for s in seen] == [LABEL, [1], "t"] and seen[0]["metadata_seen"] == {"k": 1}
    assert [d.status for d in got.details] == ["ok"] * 3
    # A reward model ignores labels: same score with and without.
    with_label = _score(srv, {"inputs": [{"prompt": "p", "response": "r", "label": LABEL}]})["scores"]
    assert with_label == _score(srv, {"inputs": [{"prompt": "p", "response": "r"}]})["scores"]


def test_typed_failures_mask_only_their_input(srv: ServerThread) -> None:
    inputs = [{"prompt": "p", "response": r} for r in ("abc", "sleep", "boom", "abcdef")]
    body = _score(srv, {"model": "user", "inputs": inputs})
    assert body["scores"] == [3.0, None, None, 6.0]
    assert [d["status"] for d in body["details"]] == ["ok", "timeout", "error", "ok"]
    assert [d["mask"] for d in body["details"]] == [False, True, True, False]
    assert "cannot score boom" in body["details"][2]["error"]
    # gRPC: NaN where masked, with status and mask.
    got = _grpc_score(
        srv,
        pb.ScoreRequest(model="user", inputs=[pb.Input(prompt="p", response=i["response"]) for i in inputs]),
    )
    assert got.scores[0] == 3.0 and math.isnan(got.scores[1]) and math.isnan(got.scores[2])
    assert [(d.status, d.mask) for d in got.details] == [
        ("ok", False),
        ("timeout", True),
        ("error", True),
        ("ok", False),
    ]
    # The pool recovered from the killed worker: the next call is answered at once.
    assert _score(srv, {"model": "user", "inputs": [{"text": "xy"}]})["scores"] == [2.0]


def test_get_reward_keeps_floats_and_adds_the_mask(srv: ServerThread) -> None:
    body = {"query": ["echo", "boom", "abcd"], "labels": ["l1", "l2", "l3"], "model": "user"}
    r = httpx.post(f"{srv.http_url}/get_reward", json=body, timeout=60)
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["rewards"] == out["scores"] == [1.0, 0.0, 4.0]
    assert out["extra_logs"]["mask"] == [0.0, 1.0, 0.0]
    # OpenRLHF's labels arrive as each input's label.
    one = httpx.post(
        f"{srv.http_url}/v1/score",
        json={"model": "user", "inputs": [{"text": "echo", "label": "l1"}]},
        timeout=60,
    ).json()
    assert one["details"][0]["extras"]["label_seen"] == "l1"


def test_slime_remote_reward_with_slimes_own_body(srv: ServerThread) -> None:
    # slime's rm_hub.remote_rm posts exactly {"prompt", "response", "label"} to --rm-url and reads
    # --reward-key from the answer.
    def remote_rm(url: str, prompt: Any, response: str, label: Any) -> dict[str, Any]:
        payload = {"prompt": prompt, "response": response, "label": label}
        r = httpx.post(url, json=payload, timeout=60)
        r.raise_for_status()
        answer: dict[str, Any] = r.json()
        return answer

    url = f"{srv.http_url}/v1/reward/math"
    right = remote_rm(url, "What is 6*7?", "6*7 = \\boxed{42}", "42")
    assert right["reward"] == 1.0 and right["status"] == "ok" and right["mask"] is False
    assert remote_rm(url, "What is 6*7?", "I think \\boxed{41}", "42")["reward"] == 0.0
    chat = [{"role": "system", "content": "math"}, {"role": "user", "content": "1/2 + 1/2?"}]
    assert remote_rm(url, chat, "The answer is \\boxed{1}", "1")["reward"] == 1.0
    failed = remote_rm(f"{srv.http_url}/v1/reward/user", "p", "boom", None)
    assert failed["reward"] is None and failed["status"] == "error" and failed["mask"] is True
    extras = remote_rm(f"{srv.http_url}/v1/reward/user", "p", "echo", {"a": 1})
    assert extras["reward"] == 1.0 and extras["label_seen"] == {"a": 1}
    # /v1/reward: the default entry (the reward model), the same number /v1/score gives.
    default = remote_rm(f"{srv.http_url}/v1/reward", "p", "r", None)
    assert default["reward"] == pytest.approx(
        _score(srv, {"inputs": [{"prompt": "p", "response": "r"}]})["scores"][0]
    )
    missing = httpx.post(f"{srv.http_url}/v1/reward/nope", json={"prompt": "p", "response": "r"})
    assert missing.status_code == 404


def _expected(rewards: list[float], method: str) -> list[float]:
    mean = statistics.fmean(rewards)
    if method == "grpo":
        return [(r - mean) / (statistics.stdev(rewards) + 1e-6) for r in rewards]
    if method == "drgrpo":
        return [r - mean for r in rewards]
    return [r - (sum(rewards) - r) / (len(rewards) - 1) for r in rewards]


@pytest.mark.parametrize("method", ["grpo", "drgrpo", "rloo"])
def test_group_advantages_leave_masked_samples_out(srv: ServerThread, method: str) -> None:
    responses = {"a": ["x", "xxx", "boom", "xxxxxx"], "b": ["yy", "yyyy"]}
    inputs = [{"prompt": g, "response": r, "group": g} for g, rs in responses.items() for r in rs]
    body = _score(srv, {"model": "user", "inputs": inputs, "advantage": method})
    advs = [d.get("advantage") for d in body["details"]]
    assert advs[2] is None and body["scores"][2] is None  # masked: no advantage, not in the stats
    assert advs[:2] + advs[3:4] == pytest.approx(_expected([1.0, 3.0, 6.0], method))
    assert advs[4:] == pytest.approx(_expected([2.0, 4.0], method))
    # gRPC: the same numbers.
    req = pb.ScoreRequest(
        model="user",
        advantage=method,
        inputs=[pb.Input(prompt=i["prompt"], response=i["response"], group=i["group"]) for i in inputs],
    )
    got = _grpc_score(srv, req)
    assert not got.details[2].HasField("advantage")
    assert [d.advantage for i, d in enumerate(got.details) if i != 2] == pytest.approx(
        [a for a in advs if a is not None]
    )
    bad = httpx.post(f"{srv.http_url}/v1/score", json={"inputs": inputs, "advantage": "ppo"})
    assert bad.status_code == 422


def test_composite_of_a_function_and_a_model(srv: ServerThread) -> None:
    inputs = [{"prompt": "p", "response": "abcd"}, {"prompt": "p", "response": "boom"}]
    rm = _score(srv, {"model": "rm", "inputs": inputs})["scores"]
    body = _score(srv, {"model": "mix", "inputs": inputs})
    ok, bad = body["details"]
    assert body["scores"][0] == pytest.approx(4.0 + 0.5 * rm[0], abs=1e-5)
    assert ok["components"] == pytest.approx({"user": 4.0, "rm": rm[0]}, abs=1e-5)
    # A masked component masks the composite, with its status; the components show what succeeded.
    assert body["scores"][1] is None and bad["status"] == "error" and bad["mask"] is True
    assert bad["components"]["user"] is None and bad["components"]["rm"] == pytest.approx(rm[1], abs=1e-5)


def test_models_list_functions_with_their_kind(srv: ServerThread) -> None:
    cards = {c["id"]: c for c in httpx.get(f"{srv.http_url}/v1/models").json()["data"]}
    assert {k: cards[k]["kind"] for k in ("rm", "user", "math", "mix")} == {
        "rm": "model",
        "user": "function",
        "math": "function",
        "mix": "composite",
    }
    assert cards["math"]["builtin"] is True and cards["user"]["timeout_s"] == 2
    with grpc.insecure_channel(srv.grpc_target) as channel:
        listed = pb_grpc.RewardServiceStub(channel).ListModels(pb.ListModelsRequest(), timeout=60)
    assert {m.id: m.kind for m in listed.models}["user"] == "function"


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_client_returns_none_for_masked_and_details_for_the_rest(srv: ServerThread, scheme: str) -> None:
    url = srv.http_url if scheme == "http" else f"grpc://{srv.grpc_target}"
    with RewardClient(url) as client:
        inputs: list[Any] = [
            {"prompt": "p", "response": "echo", "label": LABEL, "group": "g"},
            {"prompt": "p", "response": "boom", "group": "g"},
            {"prompt": "p", "response": "abc", "group": "g"},
            ("p", "abcd"),  # no group: a group of its own, advantage 0
        ]
        assert client.score(inputs, model="user") == [1.0, None, 3.0, 4.0]
        result = client.score_details(inputs, model="user", advantage="drgrpo")
        first, second, third, fourth = result.details
        assert fourth.advantage == 0.0
        assert first.extras is not None and first.extras["label_seen"] == LABEL
        assert (second.status, second.mask, second.advantage) == ("error", True, None)
        assert first.advantage == pytest.approx(1.0 - 2.0) and third.advantage == pytest.approx(1.0)
        assert third.status == "ok" and not third.mask


def test_results_are_counted_by_entry_and_status(srv: ServerThread) -> None:
    _score(srv, {"model": "user", "inputs": [{"text": "boom"}, {"text": "ok"}]})
    _score(srv, {"model": "rm", "inputs": [{"text": "ok"}]})
    text = httpx.get(f"{srv.http_url}/metrics").text
    for model, status in (("user", "error"), ("user", "ok"), ("rm", "ok"), ("mix", "error")):
        assert f'rewardserve_reward_results_total{{model="{model}",status="{status}"}}' in text
