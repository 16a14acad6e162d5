"""Generate client/sync.py (the blocking ``RewardClient``) from client/aio.py (``AsyncRewardClient``).

The two clients are the same code except for how they wait, so the async one is the source of truth
and the blocking one is derived by textual substitution (after httpcore's scripts/unasync.py): drop
``async``/``await``, rename the async names, then sort imports and format with ruff so the output is
what ``make check`` expects. What cannot be a substitution (tasks vs threads) lives in
_concurrency.py, written twice by hand.

    python -m rewardserve.client._unasync          # rewrite sync.py (``make unasync``)
    python -m rewardserve.client._unasync --check  # exit 1 if sync.py is stale (run by a test)
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "aio.py"
TARGET = HERE / "sync.py"

HEADER = "# Generated from client/aio.py by client/_unasync.py (make unasync): edit aio.py, not this file.\n"

# Phrases first (whole sentences of documentation that must read differently), then words. Each
# pattern is a regex; word patterns are matched on word boundaries.
PHRASES: list[tuple[str, str]] = [
    (
        "This file is the source of truth for both clients: client/sync.py (the blocking ``RewardClient``)\n"
        "is generated from it by client/_unasync.py (``make unasync``; a test fails when sync.py is stale).",
        "Generated from client/aio.py (the asyncio one, the source of truth) by client/_unasync.py:\n"
        "edit aio.py and run ``make unasync``; a test fails when this file is stale.",
    ),
    ("the asyncio client", "the blocking client"),
    ("asyncio client for", "Blocking client for"),
    (
        "Use it from one event loop (its connections belong to that loop).",
        "Thread-safe: threads may share one client.",
    ),
]
WORDS: list[tuple[str, str]] = [
    ("AsyncRewardClient", "RewardClient"),
    ("AsyncGrpcTransport", "GrpcTransport"),
    ("AsyncHttpTransport", "HttpTransport"),
    ("_AsyncTransport", "_Transport"),
    ("AsyncFanOut", "FanOut"),
    ("__aenter__", "__enter__"),
    ("__aexit__", "__exit__"),
    ("aclose", "close"),
    ("asyncio.sleep", "time.sleep"),
    ("import asyncio", "import time"),
    ("async def", "def"),
    ("async with", "with"),
    ("async for", "for"),
]
# `await x` -> `x`; an awaited expression in parentheses keeps them (ruff removes the redundant ones).
_AWAIT = re.compile(r"\bawait ")


def unasync(text: str) -> str:
    """aio.py's text as sync.py's, before formatting."""
    for old, new in PHRASES:
        if old not in text:
            raise ValueError(f"unasync: phrase not found in aio.py (update PHRASES in {__name__}): {old!r}")
        text = text.replace(old, new)
    for old, new in WORDS:
        text = re.sub(rf"\b{re.escape(old)}\b", new, text)
    text = _AWAIT.sub("", text)
    leftover = re.findall(r".*\b(?:async|await|Async\w*)\b.*", text)
    if leftover:
        raise ValueError(f"unasync: async code left after substitution (add a rule): {leftover[:3]}")
    return HEADER + text


def _ruff(args: list[str], text: str) -> str:
    """ruff over ``text`` as if it were sync.py (so the project's ruff settings apply)."""
    done = subprocess.run(
        [sys.executable, "-m", "ruff", *args, "--stdin-filename", str(TARGET), "-"],
        input=text,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise RuntimeError(f"ruff {' '.join(args)} failed on the generated sync.py:\n{done.stderr}")
    return done.stdout


def generate() -> str:
    """The sync.py that aio.py implies: substituted, imports sorted, formatted."""
    text = unasync(SOURCE.read_text())
    text = _ruff(["check", "--fix", "--select", "I,F401", "--quiet", "--exit-zero"], text)
    return _ruff(["format", "--quiet"], text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--check", action="store_true", help="fail if sync.py differs from the generated one")
    args = parser.parse_args(argv)
    wanted = generate()
    if args.check:
        if TARGET.read_text() != wanted:
            print(f"{TARGET} is stale: run `make unasync` (it is generated from {SOURCE})", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted)
    return 0


if __name__ == "__main__":
    sys.exit(main())
