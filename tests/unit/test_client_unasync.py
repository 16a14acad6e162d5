"""client/sync.py is generated from client/aio.py: one source of truth for both clients."""

from __future__ import annotations

import subprocess
import sys

import pytest

from rewardserve.client import _unasync


def test_sync_client_is_generated_from_the_async_one() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "rewardserve.client._unasync", "--check"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr


# The documentation phrases the generator must find (it refuses a source without them).
DOCS = "\n".join(old for old, _ in _unasync.PHRASES) + "\n"


def test_unasync_substitutes_the_async_names() -> None:
    out = _unasync.unasync(
        DOCS
        + "import asyncio\n\n\nclass AsyncRewardClient:\n"
        + "    async def aclose(self) -> None:\n"
        + "        await asyncio.sleep(1)\n"
        + "        await self.t.aclose()\n"
        + "    async def __aenter__(self) -> AsyncRewardClient: ...\n"
    )
    assert "import time" in out and "time.sleep(1)" in out and "self.t.close()" in out
    assert "class RewardClient:" in out and "def __enter__(self) -> RewardClient" in out
    assert "def close(self)" in out


def test_unasync_refuses_async_code_it_cannot_translate() -> None:
    with pytest.raises(ValueError, match="async code left"):
        _unasync.unasync(DOCS + "x = AsyncSomethingNew()\n")
