"""Every door addresses the registry by name: HTTP, gRPC native, KServe (HTTP and gRPC, through the
stock tritonclient), the client over both transports, and metrics.

One real server holds tiny random-weight models of two architectures (Llama, Qwen2, the Qwen2 one
normalized from a calibration file), a process reward model, an ensemble and a composite; every
number is checked against a plain transformers forward at 1e-5 in fp32 (helpers from
test_registry.py, the registry's own tests).
"""

from __future__ import annotations

import asyncio
import json
import math
import random
import statistics
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as tgrpc
import tritonclient.http as thttp
from test_registry import SEP, _inputs, _reference, _step_reference, _steps

from rewardserve._proto.rewardserve.v1 import reward_pb2, reward_pb2_grpc
from rewardserve.client import AsyncRewardClient, RewardClient
from rewardserve.config import Settings
from rewardserve.scoring.types import ScoreInput
from rewardserve.testing.server_thread import ServerThread

TOL = 1e-5
NORM = {"mean": 0.25, "std": 2.0}


def _wire(inp: ScoreInput) -> dict[str, Any]:
    if inp.messages is not None:
        return {"messages": [{"role": m.role, "content": m.content} for m in inp.messages]}
    if inp.steps is not None:
        return {"prompt": inp.prompt, "steps": list(inp.steps)}
    return {"prompt": inp.prompt, "response": inp.response}


@pytest.fixture(scope="module")
def prm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewardserve.testing.tiny_models import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("prm_llama"), "llama")


@pytest.fixture(scope="module")
def srv(
    tiny_llama: Path, tiny_qwen2: Path, prm: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerThread]:
    d = tmp_path_factory.mktemp("registry_doors")
    (d / "qwen2-calibration.json").write_text(json.dumps(NORM))
    (d / "models.yaml").write_text(
        f"""
models:
  - {{name: helpful, path: {tiny_llama}}}
  - {{name: safety, path: {tiny_qwen2}, normalize: qwen2-calibration.json, batch_strategy: padded}}
  - {{name: steps, path: {prm}, step_separator: "{SEP}"}}
ensembles:
  - {{name: ens, members: [helpful, safety], conservative_k: 0.5}}
composites:
  - {{name: blend, weights: {{helpful: 1.0, safety: 0.5}}}}
"""
    )
    with ServerThread(Settings(config=d / "models.yaml", port=0, grpc_port=0)) as s:
        yield s


@pytest.fixture(scope="module")
def http(srv: ServerThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=srv.http_url, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def ref(tiny_llama: Path, tiny_qwen2: Path) -> dict[str, Any]:
    """Plain transformers rewards of the shared inputs: helpful raw, safety raw and normalized."""
    inputs = _inputs(11, 8)
    helpful, safety_raw = _reference(tiny_llama, inputs), _reference(tiny_qwen2, inputs)
    safety = [(r - NORM["mean"]) / NORM["std"] for r in safety_raw]
    return {"inputs": inputs, "helpful": helpful, "safety_raw": safety_raw, "safety": safety}


def _score(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    r = http.post("/v1/score", json=body)
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_http_routes_by_name_and_default(http: httpx.Client, ref: dict[str, Any]) -> None:
    wire = [_wire(i) for i in ref["inputs"]]
    default = _score(http, {"inputs": wire})
    assert default["model"] == "helpful"
    assert default["scores"] == pytest.approx(ref["helpful"], abs=TOL)
    # A single model's answer keeps its wire contract exactly.
    # Typed results on every entry kind (issue 15): status and mask always, nothing else for a plain model.
    assert all(set(d) == {"tokens", "truncated", "objectives", "status", "mask"} for d in default["details"])
    assert all(d["status"] == "ok" and d["mask"] is False for d in default["details"])
    assert default["usage"]["prompt_tokens"] == sum(d["tokens"] for d in default["details"])
    safety = _score(http, {"model": "safety", "inputs": wire})
    assert safety["model"] == "safety"
    assert safety["scores"] == pytest.approx(ref["safety"], abs=TOL)
    assert [d["raw"] for d in safety["details"]] == pytest.approx(ref["safety_raw"], abs=TOL)


def test_http_ensemble_details_and_reduce(http: httpx.Client, ref: dict[str, Any]) -> None:
    wire = [_wire(i) for i in ref["inputs"]]
    got = _score(http, {"model": "ens", "inputs": wire})
    mins = _score(http, {"model": "ens", "inputs": wire, "reduce": "min"})["scores"]
    cons = _score(http, {"model": "ens", "inputs": wire, "reduce": "conservative"})["scores"]
    assert got["model"] == "ens"
    for i, d in enumerate(got["details"]):
        members = [ref["helpful"][i], ref["safety"][i]]
        assert d["members"] == pytest.approx({"helpful": members[0], "safety": members[1]}, abs=TOL)
        assert got["scores"][i] == pytest.approx(statistics.fmean(members), abs=TOL)
        assert d["mean"] == pytest.approx(statistics.fmean(members), abs=TOL)
        assert d["std"] == pytest.approx(statistics.pstdev(members), abs=TOL)
        assert d["min"] == mins[i] == pytest.approx(min(members), abs=TOL)
        want = statistics.fmean(members) - 0.5 * statistics.pstdev(members)
        assert d["conservative"] == pytest.approx(want, abs=TOL)
        assert cons[i] == pytest.approx(want, abs=TOL)


def test_http_composites_named_and_ad_hoc(http: httpx.Client, ref: dict[str, Any]) -> None:
    wire = [_wire(i) for i in ref["inputs"]]
    named = _score(http, {"model": "blend", "inputs": wire})
    adhoc = _score(http, {"model": {"helpful": 1.0, "safety": 0.5}, "inputs": wire})
    other = _score(http, {"model": {"safety": -2.0}, "inputs": wire})
    assert adhoc["model"] == "adhoc"
    for i in range(len(wire)):
        want = ref["helpful"][i] + 0.5 * ref["safety"][i]
        assert named["scores"][i] == pytest.approx(want, abs=TOL)
        assert adhoc["scores"][i] == named["scores"][i]
        assert named["details"][i]["components"] == pytest.approx(
            {"helpful": ref["helpful"][i], "safety": ref["safety"][i]}, abs=TOL
        )
        assert other["scores"][i] == pytest.approx(-2.0 * ref["safety"][i], abs=TOL)


def test_http_process_reward_model(http: httpx.Client, prm: Path) -> None:
    inputs = _steps(5, 6)
    want = _step_reference(prm, inputs)
    wire = [_wire(i) for i in inputs]
    got = _score(http, {"model": "steps", "inputs": wire})
    last = _score(http, {"model": "steps", "inputs": wire, "step_reduce": "last"})["scores"]
    mean = _score(http, {"model": "steps", "inputs": wire, "step_reduce": "mean"})["scores"]
    for i, steps in enumerate(want):
        assert got["details"][i]["step_scores"] == pytest.approx(steps, abs=TOL)
        assert got["scores"][i] == pytest.approx(min(steps), abs=TOL)
        assert last[i] == pytest.approx(steps[-1], abs=TOL)
        assert mean[i] == pytest.approx(statistics.fmean(steps), abs=TOL)
    # messages whose steps follow the conversation: the same chain, the same step scores
    first = inputs[0]
    assert first.steps is not None and first.prompt is not None
    as_messages = {"messages": [{"role": "user", "content": first.prompt}], "steps": list(first.steps)}
    again = _score(http, {"model": "steps", "inputs": [as_messages]})
    assert again["details"][0]["step_scores"] == pytest.approx(want[0], abs=TOL)
    # steps sent to an outcome reward model: a clear 422
    r = http.post("/v1/score", json={"model": "helpful", "inputs": [wire[0]]})
    assert r.status_code == 422 and "process reward models" in r.json()["error"]


def test_http_compare_and_get_reward_by_name(http: httpx.Client, ref: dict[str, Any]) -> None:
    p = ref["inputs"][0].prompt
    pairs = [{"prompt": p, "a": "a short answer", "b": "another answer that is longer"}]
    got = http.post("/v1/compare", json={"model": "safety", "pairs": pairs}).json()
    wire = [{"prompt": p, "response": pairs[0]["a"]}, {"prompt": p, "response": pairs[0]["b"]}]
    a, b = _score(http, {"model": "safety", "inputs": wire})["scores"]
    assert got["model"] == "safety" and got["margins"][0] == pytest.approx(a - b, abs=TOL)
    queries = ["some full text one", "another full text"]
    text_scores = _score(http, {"model": "safety", "inputs": [{"text": q} for q in queries]})["scores"]
    by_field = http.post("/get_reward", json={"query": queries, "model": "safety"}).json()
    by_path = http.post("/get_reward/safety", json={"query": queries}).json()
    default = http.post("/get_reward", json={"query": queries}).json()
    assert by_field["rewards"] == by_path["rewards"] == pytest.approx(text_scores, abs=1e-9)
    assert default["rewards"] != by_field["rewards"]
    assert http.post("/get_reward/nope", json={"query": queries}).status_code == 404


def test_http_errors_for_names_and_weights(http: httpx.Client) -> None:
    one = [{"prompt": "q", "response": "a"}]
    r = http.post("/v1/score", json={"model": "nope", "inputs": one})
    assert r.status_code == 404 and "helpful" in r.json()["error"]
    r = http.post("/v1/score", json={"model": {"nope": 1.0}, "inputs": one})
    assert r.status_code == 404
    r = http.post("/v1/score", json={"model": {}, "inputs": one})
    assert r.status_code == 422
    r = http.post("/v1/score", json={"model": "ens", "inputs": one, "reduce": "median"})
    assert r.status_code == 422


def test_models_lists_every_entry_with_kind_and_memory(http: httpx.Client) -> None:
    cards = {c["id"]: c for c in http.get("/v1/models").json()["data"]}
    assert list(cards) == ["helpful", "safety", "steps", "ens", "blend"]
    kinds = {k: c["kind"] for k, c in cards.items()}
    assert kinds == {
        "helpful": "model",
        "safety": "model",
        "steps": "prm",
        "ens": "ensemble",
        "blend": "composite",
    }
    for name in ("helpful", "safety", "steps"):
        assert cards[name]["memory_bytes"] > 0
    assert cards["safety"]["normalize"]["mean"] == NORM["mean"]
    assert cards["ens"]["members"] == ["helpful", "safety"]
    assert cards["blend"]["weights"] == {"helpful": 1.0, "safety": 0.5}


async def test_interleaved_concurrent_http_requests_never_cross(
    srv: ServerThread, ref: dict[str, Any]
) -> None:
    wire = [_wire(i) for i in ref["inputs"]]
    want = {
        "helpful": ref["helpful"],
        "safety": ref["safety"],
        "ens": [statistics.fmean(p) for p in zip(ref["helpful"], ref["safety"], strict=True)],
    }
    rng = random.Random(3)
    calls = [(rng.choice(list(want)), rng.sample(range(len(wire)), rng.randint(1, 4))) for _ in range(60)]
    async with httpx.AsyncClient(base_url=srv.http_url, timeout=60) as c:
        answers = await asyncio.gather(
            *(c.post("/v1/score", json={"model": m, "inputs": [wire[i] for i in idx]}) for m, idx in calls)
        )
    for (model, idx), r in zip(calls, answers, strict=True):
        body = r.json()
        assert body["model"] == model
        assert body["scores"] == pytest.approx([want[model][i] for i in idx], abs=TOL), model


def test_grpc_native_by_name_weights_and_steps(srv: ServerThread, ref: dict[str, Any], prm: Path) -> None:
    def pb_input(w: dict[str, Any]) -> reward_pb2.Input:
        msgs = [reward_pb2.ChatMessage(**m) for m in w.get("messages", [])]
        return reward_pb2.Input(
            prompt=w.get("prompt"), response=w.get("response"), messages=msgs, steps=w.get("steps", [])
        )

    inputs = [pb_input(_wire(i)) for i in ref["inputs"]]
    with grpc.insecure_channel(srv.grpc_target) as ch:
        stub = reward_pb2_grpc.RewardServiceStub(ch)
        safety = stub.Score(reward_pb2.ScoreRequest(model="safety", inputs=inputs))
        assert safety.model == "safety"
        assert list(safety.scores) == pytest.approx(ref["safety"], abs=TOL)
        assert [d.raw for d in safety.details] == pytest.approx(ref["safety_raw"], abs=TOL)
        assert all(d.status == "ok" and not d.mask for d in safety.details)
        ens = stub.Score(reward_pb2.ScoreRequest(model="ens", inputs=inputs, reduce="min"))
        for i, d in enumerate(ens.details):
            assert dict(d.members) == pytest.approx(
                {"helpful": ref["helpful"][i], "safety": ref["safety"][i]}, abs=TOL
            )
            assert ens.scores[i] == pytest.approx(min(ref["helpful"][i], ref["safety"][i]), abs=TOL)
            assert d.std == pytest.approx(statistics.pstdev([ref["helpful"][i], ref["safety"][i]]), abs=TOL)
        adhoc = stub.Score(reward_pb2.ScoreRequest(weights={"helpful": 1.0, "safety": 0.5}, inputs=inputs))
        assert adhoc.model == "adhoc"
        for i, d in enumerate(adhoc.details):
            assert adhoc.scores[i] == pytest.approx(ref["helpful"][i] + 0.5 * ref["safety"][i], abs=TOL)
            assert set(d.components) == {"helpful", "safety"}
        steps = _steps(9, 3)
        got = stub.Score(
            reward_pb2.ScoreRequest(
                model="steps", inputs=[pb_input(_wire(s)) for s in steps], step_reduce="mean"
            )
        )
        for i, want in enumerate(_step_reference(prm, steps)):
            assert list(got.details[i].step_scores) == pytest.approx(want, abs=TOL)
            assert got.scores[i] == pytest.approx(statistics.fmean(want), abs=TOL)
        pair = reward_pb2.Pair(prompt="q", a="one", b="two")
        cmp = stub.Compare(reward_pb2.CompareRequest(model="ens", pairs=[pair]))
        assert cmp.model == "ens" and math.isfinite(cmp.margins[0])
        cards = stub.ListModels(reward_pb2.ListModelsRequest()).models
        assert [(c.id, c.kind) for c in cards] == [
            ("helpful", "model"),
            ("safety", "model"),
            ("steps", "prm"),
            ("ens", "ensemble"),
            ("blend", "composite"),
        ]
        assert list(cards[3].members) == ["helpful", "safety"] and dict(cards[4].weights)["safety"] == 0.5
        assert cards[0].memory_bytes > 0 and json.loads(cards[1].card_json)["normalize"]["std"] == NORM["std"]
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(model="nope", inputs=inputs))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.RpcError) as err:
            stub.Score(reward_pb2.ScoreRequest(model="helpful", weights={"safety": 1.0}, inputs=inputs))
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


@pytest.mark.parametrize("module", [thttp, tgrpc], ids=["http", "grpc"])
def test_kserve_every_entry_by_name(module: Any, srv: ServerThread, http: httpx.Client) -> None:
    url = srv.http_url.removeprefix("http://") if module is thttp else srv.grpc_target
    client = module.InferenceServerClient(url)
    prompts, responses = ["2+2?", "name a colour"], ["4", "blue, like the sky"]
    wire = [{"prompt": p, "response": r} for p, r in zip(prompts, responses, strict=True)]
    try:
        for name in ("helpful", "safety", "ens", "blend"):
            assert client.is_model_ready(name)
            meta = client.get_model_metadata(name)
            outputs = (
                meta["outputs"]
                if module is thttp
                else [{"name": o.name, "datatype": o.datatype} for o in meta.outputs]
            )
            assert {"name": "score", "datatype": "FP32"}.items() <= outputs[0].items()
            tensors = []
            for key, values in (("prompt", prompts), ("response", responses)):
                t = module.InferInput(key, [len(values)], "BYTES")
                t.set_data_from_numpy(np.array([v.encode() for v in values], dtype=np.object_))
                tensors.append(t)
            result = client.infer(name, tensors)
            score = result.as_numpy("score")
            assert score.dtype == np.float32
            want = _score(http, {"model": name, "inputs": wire})["scores"]
            assert score.tolist() == pytest.approx(want, rel=1e-6, abs=1e-6)
        assert not _known(client, "nope")
    finally:
        client.close()


def _known(client: Any, name: str) -> bool:
    try:
        client.get_model_metadata(name)
    except Exception:
        return False
    return True


@pytest.mark.parametrize("transport", ["http", "grpc"])
async def test_client_names_weights_and_details(
    transport: str, srv: ServerThread, ref: dict[str, Any]
) -> None:
    url = srv.http_url if transport == "http" else f"grpc://{srv.grpc_target}"
    inputs = [_wire(i) for i in ref["inputs"]]
    async with AsyncRewardClient(url) as client:
        assert await client.score(inputs, model="safety") == pytest.approx(ref["safety"], abs=TOL)
        weights = await client.score(inputs, model={"helpful": 1.0, "safety": 0.5})
        want = [h + 0.5 * s for h, s in zip(ref["helpful"], ref["safety"], strict=True)]
        assert weights == pytest.approx(want, abs=TOL)
        ens = await client.score_details(inputs, model="ens", reduce="conservative")
        assert ens.model == "ens"
        for i, d in enumerate(ens.details):
            assert d.members == pytest.approx(
                {"helpful": ref["helpful"][i], "safety": ref["safety"][i]}, abs=TOL
            )
            assert ens.scores[i] == pytest.approx(d.conservative, abs=1e-9)
            assert d.status == "ok" and not d.mask
        safety = await client.score_details(inputs, model="safety")
        assert [d.raw for d in safety.details] == pytest.approx(ref["safety_raw"], abs=TOL)
        kinds = {m.id: m.reward_kind for m in await client.models()}
        assert kinds == {
            "helpful": "model",
            "safety": "model",
            "steps": "prm",
            "ens": "ensemble",
            "blend": "composite",
        }
    with RewardClient(url) as sync:
        steps = _steps(2, 2)
        got = sync.score_details([_wire(s) for s in steps], model="steps")
        assert all(d.step_scores for d in got.details)


def test_trl_reward_function_takes_a_name(srv: ServerThread, ref: dict[str, Any]) -> None:
    from rewardserve.client.trl import reward_function

    fn = reward_function(srv.http_url, model="ens")
    first = ref["inputs"][0]
    got = fn(prompts=[first.prompt], completions=[first.response])
    assert got == pytest.approx([statistics.fmean([ref["helpful"][0], ref["safety"][0]])], abs=TOL)


def test_metrics_carry_every_entry_name(http: httpx.Client) -> None:
    _score(http, {"model": "blend", "inputs": [{"prompt": "q", "response": "a"}]})
    _score(http, {"model": {"helpful": 2.0}, "inputs": [{"prompt": "q", "response": "a"}]})
    text = http.get("/metrics").text
    for name in ("blend", "adhoc", "ens", "safety"):
        assert f'rewardserve_reward_results_total{{model="{name}",status="ok"}}' in text
    assert 'rewardserve_reward_count{model="blend"}' in text
    assert 'rewardserve_inputs_scored_total{model="safety"}' in text
