"""Several reward models from the command line: `serve --model NAME=PATH` / `--config`, start-up
errors for each bad declaration (exit code 2, a message saying what to fix, no traceback), and
`rewardserve calibrate` end to end into `normalize: FILE`."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import torch
from test_serve_cli import Proc
from transformers import AutoModelForSequenceClassification, AutoTokenizer

BIN = Path(sys.executable).parent / "rewardserve"
ROWS = [
    {"prompt": "what is two plus two", "response": "four"},
    {"prompt": "name a colour", "response": "blue, like the sky on a clear day"},
    {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello there"}]},
    {"prompt": "say something", "response": "something"},
    {"prompt": "and again", "response": "a longer answer with a few more words in it"},
]


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = dict(os.environ)
    e.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", REWARDSERVE_CACHE_DIR=str(tmp_path / "cache"))
    return e


@pytest.fixture(scope="module")
def prm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from rewardserve.testing.tiny_models import build_tiny_prm

    return build_tiny_prm(tmp_path_factory.mktemp("prm"), "qwen2")


def _serve(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN), "serve", "--port", "0", *args], env=env, capture_output=True, text=True, timeout=180
    )


BAD_CONFIGS = {
    "unknown member": ("ensembles:\n  - {name: e, members: [a, nope]}\n", "'nope', which is not declared"),
    "duplicate name": ("composites:\n  - {name: a, weights: {a: 1.0}}\n", "declared twice"),
    "cycle": (
        "composites:\n  - {name: c1, weights: {c2: 1.0}}\n  - {name: c2, weights: {c1: 1.0}}\n",
        "cycle between entries",
    ),
    "member not a model": (
        "composites:\n  - {name: c, weights: {a: 1.0}}\nensembles:\n  - {name: e, members: [a, c]}\n",
        "members must be model entries",
    ),
    "unknown section": ("judgez:\n  - {name: j}\n", "unknown section 'judgez'"),
    "unknown field": (
        "ensembles:\n  - {name: e, members: [a, a2], k: 1}\n",
        "Extra inputs are not permitted",
    ),
    "normalize without mean/std": ("", "no numeric `mean` and `std`"),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_each_bad_config_exits_2_with_a_message(
    case: str, tiny_llama: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    extra, message = BAD_CONFIGS[case]
    normalize = ", normalize: true" if case == "normalize without mean/std" else ""
    models = (
        f"models:\n  - {{name: a, path: {tiny_llama}{normalize}}}\n  - {{name: a2, path: {tiny_llama}}}\n"
    )
    config = tmp_path / "models.yaml"
    config.write_text(models + extra)
    p = _serve(["--config", str(config)], env)
    assert p.returncode == 2, p.stderr
    assert message in p.stderr
    assert "Traceback" not in p.stderr


def test_declaration_errors_outside_the_file(tiny_llama: Path, tmp_path: Path, env: dict[str, str]) -> None:
    config = tmp_path / "models.yaml"
    config.write_text(f"models:\n  - {{name: a, path: {tiny_llama}}}\n")
    cases = [
        (["--config", str(config), "--model", f"b={tiny_llama}"], "either --config or --model"),
        (["--model", f"a={tiny_llama}", "--model", f"a={tiny_llama}"], "declared twice"),
        (["--model", f"a={tmp_path / 'missing'}"], "model directory not found"),
        (["--config", str(tmp_path / "missing.yaml")], "cannot read config file"),
    ]
    (tmp_path / "broken.yaml").write_text("models: [\n")
    cases.append((["--config", str(tmp_path / "broken.yaml")], "not valid YAML"))
    for args, message in cases:
        p = _serve(args, env)
        assert p.returncode == 2 and message in p.stderr and "Traceback" not in p.stderr, (args, p.stderr)


def test_separator_the_tokenizer_lacks_fails_at_load(prm: Path, tmp_path: Path, env: dict[str, str]) -> None:
    # Only loading the tokenizer tells: the server starts, fails the load, and exits 2.
    config = tmp_path / "models.yaml"
    config.write_text(f'models:\n  - {{name: steps, path: {prm}, step_separator: "two whole words"}}\n')
    p = _serve(["--config", str(config)], env)
    assert p.returncode == 2, p.stderr
    assert "step_separator 'two whole words' is not one token" in p.stderr
    assert "Traceback" not in p.stderr


def _plain_rewards(path: Path) -> list[float]:
    model = AutoModelForSequenceClassification.from_pretrained(str(path)).eval()
    tok = AutoTokenizer.from_pretrained(str(path))
    out = []
    with torch.no_grad():
        for row in ROWS:
            msgs = row.get("messages") or [
                {"role": "user", "content": row["prompt"]},
                {"role": "assistant", "content": row["response"]},
            ]
            text = tok.apply_chat_template(msgs, tokenize=False)
            enc = tok(text, add_special_tokens=False, return_tensors="pt")
            out.append(float(model(**enc).logits[0, 0]))
    return out


def test_calibrate_then_serve_two_models_normalized(
    tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    data = tmp_path / "reference.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    out = tmp_path / "calibration.json"
    p = subprocess.run(
        [str(BIN), "calibrate", "--model", str(tiny_llama), "--data", str(data), "-o", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 0, p.stderr
    plain = _plain_rewards(tiny_llama)
    cal = json.loads(out.read_text())
    assert cal["mean"] == pytest.approx(statistics.fmean(plain), abs=1e-5)
    assert cal["std"] == pytest.approx(statistics.pstdev(plain), abs=1e-5)
    assert cal["count"] == len(ROWS) and json.loads(p.stdout)["mean"] == cal["mean"]

    config = tmp_path / "models.yaml"
    config.write_text(
        f"models:\n  - {{name: helpful, path: {tiny_llama}, normalize: {out.name}}}\n"
        f"  - {{name: other, path: {tiny_qwen2}}}\n"
    )
    proc = Proc(["serve", "--config", str(config), "--port", "0"], env)
    try:
        url = f"http://127.0.0.1:{proc.port(60)}"
        proc.wait_ready(url, 60)
        cards = httpx.get(f"{url}/v1/models").json()["data"]
        assert [(c["id"], c["kind"]) for c in cards] == [("helpful", "model"), ("other", "model")]
        assert all(c["memory_bytes"] > 0 for c in cards)
        body = httpx.post(f"{url}/v1/score", json={"inputs": ROWS}, timeout=60).json()
        assert body["model"] == "helpful"
        assert [d["raw"] for d in body["details"]] == pytest.approx(plain, abs=1e-5)
        want = [(r - cal["mean"]) / cal["std"] for r in plain]
        assert body["scores"] == pytest.approx(want, abs=1e-5)
        other = httpx.post(f"{url}/v1/score", json={"model": "other", "inputs": ROWS}, timeout=60).json()
        assert other["model"] == "other" and other["scores"] != body["scores"]
    finally:
        proc.close()
    assert proc.p.returncode == 0, proc.log()


def test_repeated_model_flags_serve_each_by_name(
    tiny_llama: Path, tiny_qwen2: Path, env: dict[str, str]
) -> None:
    proc = Proc(
        ["serve", "--model", f"first={tiny_qwen2}", "--model", f"second={tiny_llama}", "--port", "0"], env
    )
    try:
        url = f"http://127.0.0.1:{proc.port(60)}"
        proc.wait_ready(url, 60)
        ids = [c["id"] for c in httpx.get(f"{url}/v1/models").json()["data"]]
        assert ids == ["first", "second"]
        plain = _plain_rewards(tiny_llama)
        body = httpx.post(f"{url}/v1/score", json={"model": "second", "inputs": ROWS}, timeout=60).json()
        assert body["scores"] == pytest.approx(plain, abs=1e-5)
        default = httpx.post(f"{url}/v1/score", json={"inputs": ROWS[:1]}, timeout=60).json()
        assert default["model"] == "first"
    finally:
        proc.close()


def test_calibrate_refuses_bad_input(tiny_llama: Path, tmp_path: Path, env: dict[str, str]) -> None:
    data = tmp_path / "bad.jsonl"
    data.write_text('{"prompt": "only a prompt"}\n{"text": "fine"}\n')
    p = subprocess.run(
        [
            str(BIN),
            "calibrate",
            "--model",
            str(tiny_llama),
            "--data",
            str(data),
            "-o",
            str(tmp_path / "o.json"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert p.returncode == 2 and "give exactly one of" in p.stderr and "Traceback" not in p.stderr


def test_score_logs_with_two_models_writes_a_column_each(
    tiny_llama: Path, tiny_qwen2: Path, tmp_path: Path, env: dict[str, str]
) -> None:
    import pyarrow.parquet as pq

    rows = [r for r in ROWS if "prompt" in r] * 3
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "scored.parquet"
    args = [str(log), "-o", str(out), "--model", f"helpful={tiny_llama}", "--model", f"other={tiny_qwen2}"]
    p = subprocess.run([str(BIN), "score-logs", *args], env=env, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    table = pq.read_table(out).to_pylist()
    assert len(table) == len(rows)
    plain = {name: _plain_rewards(path) for name, path in (("helpful", tiny_llama), ("other", tiny_qwen2))}
    pair_rows = [i for i, r in enumerate(ROWS) if "prompt" in r]
    for k, got in enumerate(table):
        i = pair_rows[k % len(pair_rows)]
        assert got["reward_helpful"] == pytest.approx(plain["helpful"][i], abs=1e-5)
        assert got["reward_other"] == pytest.approx(plain["other"][i], abs=1e-5)
        assert got["reward"] == got["reward_helpful"] and got["reward_model"] == "helpful"
