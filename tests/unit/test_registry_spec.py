"""Declaring several reward sources: YAML / --model parsing and every start-up error (no torch).

Model directories here hold only a config.json: the spec reads a model's kind and its OpenRLHF
mean/std from there and nothing else, so no model is loaded.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from rewardserve.config import Settings
from rewardserve.errors import ConfigError
from rewardserve.sources import spec
from rewardserve.sources.spec import ModelPlan


def _model_dir(root: Path, name: str, arch: str = "LlamaForSequenceClassification", **extra: Any) -> Path:
    d = root / name
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": [arch], **extra}))
    return d


def _yaml(tmp_path: Path, text: str) -> Path:
    f = tmp_path / "models.yaml"
    f.write_text(text)
    return f


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {
        "helpful": _model_dir(tmp_path, "helpful", mean=0.5, std=2.0),
        "safety": _model_dir(tmp_path, "safety"),
        "steps": _model_dir(tmp_path, "steps", "Qwen2ForTokenClassification"),
    }


def test_issue_example_parses_in_file_order(tmp_path: Path, dirs: dict[str, Path]) -> None:
    (tmp_path / "cal.json").write_text(json.dumps({"mean": -1.0, "std": 4.0, "count": 10}))
    f = _yaml(
        tmp_path,
        """
models:
  - {name: helpful, path: helpful, normalize: true, max_batch_tokens: 4096, device: cpu}
  - {name: safety, path: safety, normalize: cal.json}
  - {name: steps, path: steps, step_separator: "<extra_0>"}
ensembles:
  - {name: ens, members: [helpful, safety], conservative_k: 2.0}
composites:
  - {name: blend, weights: {helpful: 1.0, safety: 0.5}}
""",
    )
    entries = spec.from_settings(Settings(config=f))
    assert [(e.name, e.kind) for e in entries] == [
        ("helpful", "model"),
        ("safety", "model"),
        ("steps", "prm"),  # detected from *ForTokenClassification
        ("ens", "ensemble"),
        ("blend", "composite"),
    ]
    helpful, safety = entries[0].plan, entries[1].plan
    assert isinstance(helpful, ModelPlan) and isinstance(safety, ModelPlan)
    assert helpful.config.path == dirs["helpful"]  # relative to the YAML file
    assert helpful.normalization is not None and (helpful.normalization.mean, helpful.normalization.std) == (
        0.5,
        2.0,
    )
    assert safety.normalization is not None and safety.normalization.apply(3.0) == 1.0
    per_model = helpful.config.settings(Settings(max_batch_tokens=9999))
    assert (per_model.max_batch_tokens, per_model.device, per_model.model_name) == (4096, "cpu", "helpful")
    assert per_model.model == dirs["helpful"]
    assert safety.config.settings(Settings(max_batch_tokens=9999)).max_batch_tokens == 9999
    assert entries[3].refs == ("helpful", "safety")


def test_sections_order_decides_the_default(tmp_path: Path, dirs: dict[str, Path]) -> None:
    f = _yaml(
        tmp_path,
        "composites:\n  - {name: c, weights: {helpful: 1}}\nmodels:\n  - {name: helpful, path: helpful}\n",
    )
    assert [e.name for e in spec.from_settings(Settings(config=f))] == ["c", "helpful"]
    # ...and the builder still builds helpful first.
    assert [e.name for e in spec.dependency_order(spec.from_settings(Settings(config=f)))] == ["helpful", "c"]


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("models:\n  - {name: a, path: helpful}\n  - {name: a, path: safety}\n", "declared twice"),
        (
            "models:\n  - {name: a, path: helpful}\nensembles:\n  - {name: a, members: [a, a]}\n",
            "listed twice",
        ),
        ("models:\n  - {name: a, path: helpful}\nensembles:\n  - {name: e, members: [a, nope]}\n", "'nope'"),
        (
            "models:\n  - {name: a, path: helpful}\ncomposites:\n  - {name: c, weights: {zz: 1}}\n",
            "not declared",
        ),
        ("models:\n  - {name: a, path: nowhere}\n", "model directory not found"),
        ("models:\n  - {name: a, path: helpful, colour: red}\n", "colour"),
        ("models:\n  - {name: 'a b', path: helpful}\n", "name"),
        ("models:\n  - {name: a, path: helpful, device: tpu}\n", "device"),
        ("models:\n  - {name: a, path: helpful}\ngraders: []\n", "unknown section 'graders'"),
        ("models: []\n", "no reward model declared"),
        ("models: {name: a}\n", "must be a list"),
        ("[1, 2]\n", "must be a mapping"),
        ("models:\n  - {name: a, path: helpful}\nensembles:\n  - {name: e, members: [a]}\n", "at least 2"),
        (
            "models:\n  - {name: a, path: helpful}\n  - {name: s, path: steps}\nensembles:\n"
            "  - {name: e, members: [a, s]}\n",
            "'s' is a prm entry; ensemble members must be model entries",
        ),
        (
            "models:\n  - {name: a, path: helpful}\n  - {name: b, path: safety}\nensembles:\n"
            "  - {name: e, members: [a, b]}\n  - {name: e2, members: [a, e]}\n",
            "'e' is a ensemble entry",
        ),
        (
            "models:\n  - {name: a, path: helpful}\ncomposites:\n  - {name: x, weights: {a: 1, y: 1}}\n"
            "  - {name: y, weights: {x: 1}}\n",
            "cycle between entries: x -> y -> x",
        ),
        ("models:\n  - {name: a, path: helpful}\ncomposites:\n  - {name: x, weights: {x: 1}}\n", "x -> x"),
        ("models:\n  - {name: a, path: helpful}\ncomposites:\n  - {name: x, weights: {a: .nan}}\n", "finite"),
        ("models:\n  - {name: a, path: helpful, max_input_tokens: 4}\n", "max_input_tokens"),
        # the normalization sources
        ("models:\n  - {name: a, path: safety, normalize: true}\n", "no numeric `mean` and `std`"),
        ("models:\n  - {name: a, path: safety, normalize: missing.json}\n", "cannot read normalization file"),
        ("models:\n  - {name: a, path: safety, normalize: bad.json}\n", "not valid JSON"),
        ("models:\n  - {name: a, path: safety, normalize: zero.json}\n", "std > 0"),
        ("models:\n  - {name: a, path: safety, normalize: strings.json}\n", "no numeric"),
        ("models: [\n", "not valid YAML"),
    ],
)
def test_bad_declarations_fail_at_start_up(
    tmp_path: Path, dirs: dict[str, Path], body: str, message: str
) -> None:
    (tmp_path / "bad.json").write_text("{nope")
    (tmp_path / "zero.json").write_text('{"mean": 1, "std": 0}')
    (tmp_path / "strings.json").write_text('{"mean": "1", "std": "2"}')
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        spec.from_settings(Settings(config=_yaml(tmp_path, body)))


def test_model_flags(tmp_path: Path, dirs: dict[str, Path]) -> None:
    entries = spec.from_settings(Settings(models=[f"a={dirs['helpful']}", f"b={dirs['steps']}"]))
    assert [(e.name, e.kind) for e in entries] == [("a", "model"), ("b", "prm")]
    # A bare path keeps today's meaning: the name comes from --name.
    entries = spec.from_settings(Settings(model=dirs["helpful"], model_name="rm"))
    assert [e.name for e in entries] == ["rm"]
    entries = spec.from_settings(Settings(model=dirs["helpful"], models=[f"s={dirs['safety']}"]))
    assert [e.name for e in entries] == ["default", "s"]
    with pytest.raises(ConfigError, match="declared twice"):
        spec.from_settings(Settings(models=[str(dirs["helpful"]), str(dirs["safety"])]))
    with pytest.raises(ConfigError, match="either --config or --model"):
        spec.from_settings(Settings(models=[str(dirs["helpful"])], config=tmp_path / "x.yaml"))
    # Nothing declared: the demo model under --name (built by the model builder).
    (entry,) = spec.from_settings(Settings())
    assert (entry.name, entry.kind, entry.plan.config.path) == ("default", "model", None)


def test_parse_model_flag() -> None:
    assert spec.parse_model_flag("a=/m/x", "default") == ("a", "/m/x")
    assert spec.parse_model_flag("/m/x", "default") == ("default", "/m/x")
    assert spec.parse_model_flag("/m/a=b", "default") == ("default", "/m/a=b")  # '=' inside a path
    assert spec.parse_model_flag("rel/dir", "n") == ("n", "rel/dir")
