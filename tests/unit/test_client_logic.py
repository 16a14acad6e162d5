"""The client's pure logic: input forms, chunking, error indices, backoff, the endpoint pool."""

from __future__ import annotations

import email.utils
import random
import time
from typing import Any

import pytest

from rewardserve.client import InvalidRequest, Overloaded, RetryPolicy, Unavailable
from rewardserve.client._core import chunks, compare_bodies, generate_body, in_chunk, score_bodies
from rewardserve.client._http import parse_retry_after
from rewardserve.client.balance import EndpointPool
from rewardserve.client.trl import to_inputs
from rewardserve.client.types import input_to_wire
from rewardserve.client.verl import to_input


def test_input_forms_map_to_the_wire_format() -> None:
    chat = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": None, "tool_calls": []}]
    assert input_to_wire("t", 0) == {"text": "t"}
    assert input_to_wire(("p", "r"), 0) == {"prompt": "p", "response": "r"}
    assert input_to_wire(chat, 0) == {
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": ""}]
    }
    parts = [
        {
            "role": "user",
            "content": [{"type": "text", "text": "a"}, {"type": "image"}, {"type": "text", "text": "b"}],
        }
    ]
    assert input_to_wire({"messages": parts}, 0) == {"messages": [{"role": "user", "content": "ab"}]}
    for bad, match in [({"prompt": "p"}, "exactly one"), ({"txt": "x"}, "unknown keys"), (3, "expected")]:
        with pytest.raises(TypeError, match=match):
            input_to_wire(bad, 7)


def test_score_bodies_split_in_order_and_keep_options() -> None:
    bodies = score_bodies([f"t{i}" for i in range(7)], model="m", truncate=True, chunk_size=3)
    assert [span for span, _ in bodies] == [(0, 3), (3, 6), (6, 7)]
    assert [x["text"] for _, b in bodies for x in b["inputs"]] == [f"t{i}" for i in range(7)]
    assert all(b["model"] == "m" and b["truncate"] is True for _, b in bodies)
    assert score_bodies([], model=None, truncate=False, chunk_size=3) == []
    assert chunks(4, 2) == [(0, 2), (2, 4)]
    # A pair is two inputs on the server: chunks of pairs are half as long.
    pairs = compare_bodies([("p", "a", "b")] * 5, model=None, truncate=False, chunk_size=4)
    assert [span for span, _ in pairs] == [(0, 2), (2, 4), (4, 5)]


def test_generate_body_takes_text_or_chats_not_both() -> None:
    body = generate_body(
        ["a", "b"],
        n=2,
        max_tokens=5,
        temperature=0.5,
        top_p=1.0,
        top_k=None,
        seed=1,
        stop="x",
        logprobs=False,
        extra={"ignore_eos": True},
    )
    assert body["prompts"] == ["a", "b"] and body["stop"] == "x" and body["ignore_eos"] is True
    assert "top_k" not in body and body["seed"] == 1
    chats = generate_body(
        [[{"role": "user", "content": "hi"}]],
        n=1,
        max_tokens=1,
        temperature=1,
        top_p=1,
        top_k=3,
        seed=None,
        stop=None,
        logprobs=True,
        extra={},
    )
    assert chats["messages"] == [[{"role": "user", "content": "hi"}]] and chats["top_k"] == 3
    with pytest.raises(TypeError, match="mix"):
        generate_body(
            ["a", [{"role": "user", "content": "hi"}]],
            n=1,
            max_tokens=1,
            temperature=1,
            top_p=1,
            top_k=None,
            seed=None,
            stop=None,
            logprobs=False,
            extra={},
        )


def test_chunk_errors_name_the_index_in_the_whole_list() -> None:
    exc = InvalidRequest("inputs[2]: too long (300 tokens > 256); set truncate", endpoint="u", status=422)
    moved = in_chunk(exc, (256, 512), 600)
    assert isinstance(moved, InvalidRequest) and moved.message.startswith("inputs[258]: too long")
    assert (moved.endpoint, moved.status) == ("u", 422)
    assert in_chunk(InvalidRequest("pairs[1].b: x"), (10, 20), 30).message == "pairs[11].b: x"
    assert in_chunk(exc, (0, 256), 600) is exc


def test_retry_after_parsing() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    later = email.utils.formatdate(time.time() + 30, usegmt=True)
    assert 25 < (parse_retry_after(later) or 0) <= 31


def test_backoff_grows_with_jitter_and_honours_retry_after() -> None:
    policy = RetryPolicy(initial_backoff_s=0.1, max_backoff_s=1.0, multiplier=2.0, max_retry_after_s=10)
    rng = random.Random(0)
    plain = Unavailable("down")
    for attempt, cap in [(1, 0.1), (2, 0.2), (3, 0.4), (5, 1.0), (9, 1.0)]:
        delays = [policy.delay(attempt, plain, rng) for _ in range(50)]
        assert all(cap / 2 <= d <= cap for d in delays)
        assert len(set(delays)) > 1  # jittered
    assert policy.delay(1, Overloaded("busy", retry_after_s=3), rng) == 3
    assert policy.delay(1, Overloaded("busy", retry_after_s=3600), rng) == 10  # capped
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_pool_round_robin_marks_down_and_recovers() -> None:
    clock = Clock()
    pool: EndpointPool[Any] = EndpointPool(["a", "b", "c"], ["A", "B", "C"], cooloff_s=10, clock=clock)
    assert [pool.pick() for _ in range(6)] == [0, 1, 2, 0, 1, 2]
    pool.failed(1, Unavailable("gone"), max_retry_after_s=60)
    assert [pool.pick() for _ in range(4)] == [0, 2, 0, 2]
    assert [s.healthy for s in pool.states()] == [True, False, True]
    assert pool.states()[1].down_for_s == 10
    pool.failed(0, Overloaded("busy", retry_after_s=2), max_retry_after_s=60)  # busy: out for 2 s only
    pool.failed(2, Overloaded("busy"), max_retry_after_s=60)  # no Retry-After: stays in rotation
    assert pool.pick() == 2
    pool.failed(2, Unavailable("gone"), max_retry_after_s=60)
    assert not pool.any_healthy()
    assert pool.pick() == 0  # all down: the one back soonest
    clock.now += 2.5
    assert pool.any_healthy() and pool.pick() == 0
    pool.succeeded(1)
    assert pool.states()[1].healthy


def test_trainer_adapters_build_the_right_inputs() -> None:
    chat_p = [{"role": "user", "content": "q"}]
    chat_c = [{"role": "assistant", "content": "a"}]
    assert to_inputs(["p"], ["c"]) == [("p", "c")]
    assert to_inputs(["p"], ["c"], as_text=True) == ["pc"]
    assert to_inputs([chat_p], [chat_c]) == [[*chat_p, *chat_c]]
    assert to_inputs([chat_p], ["a"]) == [[*chat_p, {"role": "assistant", "content": "a"}]]
    with pytest.raises(ValueError):
        to_inputs(["p"], [])
    # TRL: label_column's values ride along as each input's label.
    assert to_inputs(["p", "q"], ["c", "d"], labels=[{"x": 1}, 4]) == [
        {"prompt": "p", "response": "c", "label": {"x": 1}},
        {"prompt": "q", "response": "d", "label": 4},
    ]
    assert to_inputs([chat_p], [chat_c], labels=["7"]) == [{"messages": [*chat_p, *chat_c], "label": "7"}]
    # verl: ground_truth is the label, data_source and extra_info the metadata (numpy made plain).
    import numpy as np

    meta = {"data_source": None, "extra_info": {"question": "q"}}
    assert to_input("s", {"question": "q"}) == {"prompt": "q", "response": "s", "metadata": meta}
    assert to_input("s", {"prompt": chat_p}, "4", "gsm8k") == {
        "messages": [*chat_p, {"role": "assistant", "content": "s"}],
        "label": "4",
        "metadata": {"data_source": "gsm8k", "extra_info": {"prompt": chat_p}},
    }
    assert to_input("s", None) == {"text": "s"}
    assert to_input("s", {"index": np.int64(1)}, np.array([1, 2]))["label"] == [1, 2]
    assert to_input("s", {"index": np.int64(1)})["metadata"]["extra_info"] == {"index": 1}


def test_http_statuses_map_to_typed_errors() -> None:
    import httpx

    from rewardserve.client import DeadlineExceeded, ModelNotFound, NotSupported, ServerError
    from rewardserve.client._http import status_error

    def err(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Exception:
        response = httpx.Response(status, json=body, headers=headers)
        return status_error("http://h", "/v1/x", response)

    busy = err(429, {"error": "busy", "type": "overloaded"}, {"Retry-After": "2"})
    assert isinstance(busy, Overloaded) and busy.retry_after_s == 2 and busy.retryable
    assert isinstance(err(503, {"error": "draining"}), Unavailable)
    assert isinstance(err(404, {"error": "model 'x' is not served"}), ModelNotFound)
    assert isinstance(err(404, {"detail": "Not Found"}), NotSupported)  # no such route on that server
    assert isinstance(err(422, {"error": "bad"}), InvalidRequest)
    assert isinstance(err(504, {"error": "late"}), DeadlineExceeded)
    internal = err(500, {"error": "internal error"})
    assert isinstance(internal, ServerError) and not internal.retryable
    assert str(internal) == "internal error (500) [http://h]"
