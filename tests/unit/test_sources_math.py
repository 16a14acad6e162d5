"""Ensembles, composites, step reductions and the registry's lookups, on fake sources (no torch)."""

from __future__ import annotations

import asyncio
import math
import statistics
from collections.abc import Sequence
from typing import Any

import pytest

from rewardserve.errors import InputError, ModelNotFound
from rewardserve.registry import ADHOC_NAME, Registry
from rewardserve.scoring.types import RewardResult, ScoreInput, ScoreOptions
from rewardserve.sources.aggregate import Normalization, ensemble_stats, reduce_steps, weighted_sum
from rewardserve.sources.base import compare
from rewardserve.sources.composite import CompositeSource
from rewardserve.sources.ensemble import EnsembleSource


class Fake:
    """A source that returns fixed rewards per input text and records the options it got."""

    kind = "model"

    def __init__(self, name: str, rewards: dict[str, float | None], *, fail: Exception | None = None) -> None:
        self.name = name
        self.rewards = rewards
        self.fail = fail
        self.seen: list[ScoreOptions] = []
        self.started = self.closed = False

    def card(self) -> dict[str, Any]:
        return {"id": self.name, "kind": self.kind}

    async def score(self, inputs: Sequence[ScoreInput], options: ScoreOptions) -> list[RewardResult]:
        self.seen.append(options)
        await asyncio.sleep(0)
        if self.fail is not None:
            raise self.fail
        out = []
        for inp in inputs:
            r = self.rewards[inp.text or ""]
            out.append(RewardResult(r, tokens=3) if r is not None else RewardResult(None, status="timeout"))
        return out

    async def start(self) -> None:
        self.started = True

    async def close(self, *, drain: bool = True, timeout: float | None = None) -> None:
        self.closed = True


X, Y = ScoreInput(text="x"), ScoreInput(text="y")


def test_ensemble_stats_population_std() -> None:
    vals = [1.0, 2.0, 6.0]
    s = ensemble_stats(vals, 1.5)
    assert s.mean == 3.0
    assert s.std == pytest.approx(statistics.pstdev(vals))  # ddof 0, not statistics.stdev
    assert s.min == 1.0
    assert s.conservative == pytest.approx(3.0 - 1.5 * statistics.pstdev(vals))
    assert (s.pick("mean"), s.pick("min"), s.pick("conservative")) == (s.mean, s.min, s.conservative)
    assert ensemble_stats([2.0], 1.0).std == 0.0


def test_step_reductions() -> None:
    steps = [0.9, 0.5, 0.8]
    assert reduce_steps(steps, "min") == 0.5
    assert reduce_steps(steps, "last") == 0.8
    assert reduce_steps(steps, "mean") == pytest.approx(2.2 / 3)
    assert reduce_steps(steps, "prod") == pytest.approx(0.36)
    with pytest.raises(ValueError, match="no step"):
        reduce_steps([], "min")


def test_normalization_and_weighted_sum() -> None:
    n = Normalization(1.0, 2.0, "cal.json")
    assert n.apply(5.0) == 2.0
    assert n.card() == {"mean": 1.0, "std": 2.0, "from": "cal.json"}
    for bad in ((0.0, 0.0), (0.0, -1.0), (math.nan, 1.0), (0.0, math.inf)):
        with pytest.raises(ValueError, match="std > 0"):
            Normalization(*bad, "f")
    assert weighted_sum([1.0, 2.0], [1.0, 0.5]) == 2.0


async def test_ensemble_details_and_reduce_option() -> None:
    a, b, c = (
        Fake("a", {"x": 1.0, "y": 0.0}),
        Fake("b", {"x": 2.0, "y": 0.0}),
        Fake("c", {"x": 6.0, "y": 3.0}),
    )
    ens = EnsembleSource("ens", [a, b, c], conservative_k=1.0)
    r = await ens.score([X, Y], ScoreOptions())
    assert [x.score for x in r] == [3.0, 1.0]
    d = r[0].details()
    assert d["members"] == {"a": 1.0, "b": 2.0, "c": 6.0}
    assert d["std"] == pytest.approx(statistics.pstdev([1, 2, 6]))
    assert (d["mean"], d["min"]) == (3.0, 1.0)
    assert d["conservative"] == pytest.approx(3.0 - statistics.pstdev([1, 2, 6]))
    assert d["tokens"] == 9  # every member's tokens
    assert [x.score for x in await ens.score([X, Y], ScoreOptions(reduce="min"))] == [1.0, 0.0]
    cons = await ens.score([X], ScoreOptions(reduce="conservative"))
    assert cons[0].score == pytest.approx(d["conservative"])
    # Members see the request's options unchanged (truncate, deadline, step_reduce).
    opts = ScoreOptions(truncate=True, deadline=5.0)
    await ens.score([X], opts)
    assert a.seen[-1] is opts and c.seen[-1] is opts
    default_min = EnsembleSource("e2", [a, b], reduce="min")
    assert (await default_min.score([X], ScoreOptions()))[0].score == 1.0


async def test_masked_member_masks_the_input_never_a_zero() -> None:
    a, b = Fake("a", {"x": 1.0, "y": None}), Fake("b", {"x": 2.0, "y": 4.0})
    r = await EnsembleSource("e", [a, b]).score([X, Y], ScoreOptions())
    assert r[0].score == 1.5 and not r[0].mask
    assert r[1].score is None and r[1].mask and r[1].status == "error"
    assert "member 'a'" in (r[1].error or "") and r[1].members == {"a": None, "b": 4.0}
    comp = await CompositeSource("c", [(a, 1.0), (b, 1.0)]).score([X, Y], ScoreOptions())
    assert comp[0].score == 3.0 and comp[1].score is None and comp[1].details()["mask"] is True


async def test_a_failing_member_fails_the_call() -> None:
    a, b = Fake("a", {"x": 1.0}), Fake("b", {}, fail=InputError("too long", index=0))
    with pytest.raises(InputError, match="too long"):
        await EnsembleSource("e", [a, b]).score([X], ScoreOptions())


async def test_composite_and_adhoc_weights() -> None:
    h, s = Fake("helpful", {"x": 2.0}), Fake("safety", {"x": -4.0})
    ens = EnsembleSource("ens", [h, s])
    reg = Registry([h, s, ens, CompositeSource("blend", [(h, 1.0), (s, 0.5)])])
    r = await reg.get("blend").score([X], ScoreOptions())
    assert r[0].score == 0.0 and r[0].components == {"helpful": 2.0, "safety": -4.0}
    adhoc = reg.resolve({"helpful": 1.0, "ens": 2.0})
    assert adhoc.name == ADHOC_NAME
    r = await adhoc.score([X], ScoreOptions())
    assert r[0].score == 2.0 + 2.0 * (-1.0)
    assert r[0].details()["components"] == {"helpful": 2.0, "ens": -1.0}
    with pytest.raises(ModelNotFound, match="'nope'"):
        reg.resolve({"nope": 1.0})
    with pytest.raises(InputError, match="finite"):
        reg.resolve({"helpful": math.inf})
    with pytest.raises(InputError, match="finite"):
        reg.resolve({"helpful": "1"})  # type: ignore[dict-item]
    with pytest.raises(InputError, match="empty"):
        reg.resolve({})


async def test_registry_lookup_cards_and_lifecycle() -> None:
    a, b = Fake("a", {"x": 1.0, "y": 2.0}), Fake("b", {"x": 5.0, "y": 7.0})
    reg = Registry([a, b])
    assert reg.default is a and reg.get(None) is a and reg.get("") is a and reg.resolve("b") is b
    assert reg.names == ["a", "b"] and "b" in reg and len(reg) == 2
    with pytest.raises(ModelNotFound, match=r"'c' is not served here; available: \['a', 'b'\]"):
        reg.get("c")
    assert [c["kind"] for c in reg.cards()] == ["model", "model"]
    await reg.start()
    assert a.started and b.started
    await reg.close()
    assert a.closed and b.closed
    pairs = await compare(b, [(Y, X)], ScoreOptions())
    assert pairs[0].margin == 2.0 and pairs[0].probability == pytest.approx(1 / (1 + math.exp(-2.0)))


def test_result_details_only_set_fields() -> None:
    # status and mask always (issue 15: typed results for every entry kind), the rest only if set.
    ok = {"status": "ok", "mask": False}
    assert RewardResult(1.0, tokens=4).details() == {"tokens": 4, "truncated": False, **ok}
    d = RewardResult(0.5, raw=3.0, step_scores=(0.5, 0.9), objectives={"h": 1.0}).details()
    assert d == {
        "tokens": 0,
        "truncated": False,
        **ok,
        "raw": 3.0,
        "step_scores": [0.5, 0.9],
        "objectives": {"h": 1.0},
    }
    m = RewardResult(None, status="timeout", error="slow")
    assert m.mask and m.details() == {
        "tokens": 0,
        "truncated": False,
        "status": "timeout",
        "mask": True,
        "error": "slow",
    }
    e = RewardResult(1.0, extras={"passed": 3}, advantage=0.5).details()
    assert e["extras"] == {"passed": 3} and e["advantage"] == 0.5
