"""The policy file: every bad file gives one clear line per problem with file:line:column and the field path,
through the library and through `gpu-autoscaler validate`; the shipped files are valid and complete."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from pydantic import BaseModel

from autoscaler.cli import main
from autoscaler.config import Policy
from autoscaler.policyfile import PolicyError, load_default_policy, load_policy, parse_policy

ROOT = Path(__file__).resolve().parents[1]

GOOD = """\
pools:
  - name: web
    max_capacity: 4
    candidates:
      - {cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}
"""

# (case, file text, expected "line:col: path: message" fragment)
BAD = [
    (
        "misspelt key",
        GOOD.replace("max_capacity", "max_capacty"),
        ":3:5: pools[0].max_capacty: unknown key",
    ),
    (
        "misspelt optional key",
        GOOD.replace("throughput: 1}", "throughput: 1, zonez: [sim-east-a]}"),
        ":5:82: pools[0].candidates[0].zonez: unknown key 'zonez': did you mean 'zones'?",
    ),
    (
        "a real cloud without regions",
        "clouds:\n  simulated: {}\n  aws: {profile: ops}\n" + GOOD,
        ":3:3: clouds.aws.regions: name at least one region for aws",
    ),
    (
        "wrong type",
        GOOD.replace("max_capacity: 4", "max_capacity: lots"),
        ":3:5: pools[0].max_capacity: Input should be a valid number",
    ),
    (
        "negative max",
        GOOD.replace("max_capacity: 4", "max_capacity: -4"),
        ":3:5: pools[0].max_capacity: Input should be greater than 0 (got -4)",
    ),
    (
        "unknown cloud",
        GOOD.replace("cloud: simulated", "cloud: oracle"),
        ":5:10: pools[0].candidates[0].cloud: Input should be 'simulated', 'aws', 'gcp' or 'azure' (got 'oracle')",
    ),
    (
        "cloud not enabled",
        GOOD.replace("cloud: simulated", "cloud: aws"),
        ":5:10: pools[0].candidates[0].cloud: cloud 'aws' is not enabled under clouds:",
    ),
    (
        "duplicate pool names",
        GOOD + GOOD.replace("pools:\n", ""),
        ":6:5: pools[1].name: duplicate pool name 'web'",
    ),
    (
        "candidate with no throughput",
        GOOD.replace(", throughput: 1", ""),
        ":5:9: pools[0].candidates[0].throughput: required field is missing",
    ),
    (
        "invalid YAML",
        GOOD.replace("max_capacity: 4", "max_capacity: [4"),
        ":4:15: invalid YAML: expected ',' or ']', but got ':'",
    ),
    (
        "duplicate key",
        GOOD.replace("max_capacity: 4", "max_capacity: 4\n    max_capacity: 5"),
        ":4:5: pools[0].max_capacity: duplicate key 'max_capacity'",
    ),
    (
        "not a mapping",
        "- just\n- a list\n",
        ":1:1: the policy must be a mapping at the top level",
    ),
    (
        "bad enum value",
        GOOD.replace("market: spot", "market: reserved"),
        ":5:53: pools[0].candidates[0].market: Input should be 'spot' or 'on-demand' (got 'reserved')",
    ),
    (
        "unknown metric source type",
        GOOD.replace("    candidates:", "    metrics: [{name: q, type: kafka}]\n    candidates:"),
        ":4:15: pools[0].metrics[0]: Input tag 'kafka' found using 'type' does not match any of the expected tags",
    ),
    (
        "misspelt key inside a metric source",
        GOOD.replace(
            "    candidates:",
            "    targets: {queue_per_unit: 5}\n    metrics:\n      - {name: q, type: prometheus, url: 'http://x', qeury: up}\n    candidates:",
        ),
        ":6:54: pools[0].metrics[0].qeury: unknown key 'qeury': did you mean 'query'?",
    ),
    (
        "min above max",
        GOOD.replace("max_capacity: 4", "max_capacity: 4\n    min_capacity: 9"),
        ":4:5: pools[0].min_capacity: min_capacity 9.0 > max_capacity 4.0",
    ),
    (
        "admin listen without port",
        "daemon: {admin: {listen: localhost}}\n" + GOOD,
        ":1:10: daemon.admin: Value error, listen must be HOST:PORT, got 'localhost'",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[c[0] for c in BAD])
def test_bad_policy_names_file_line_column_and_field(case: str, text: str, expected: str) -> None:
    with pytest.raises(PolicyError) as err:
        parse_policy(text, "bad.yaml")
    lines = str(err.value).splitlines()
    assert any(line.startswith("bad.yaml:") and expected in line for line in lines), lines
    assert all(line.startswith("bad.yaml:") for line in lines)
    assert len(lines) == 1, "one mistake, one line"


@pytest.mark.parametrize(("case", "text", "expected"), BAD, ids=[c[0] for c in BAD])
def test_validate_command_prints_one_line_per_problem_and_exits_non_zero(
    tmp_path: Path, case: str, text: str, expected: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2
    assert f"{path}{expected}" in result.output
    assert "Traceback" not in result.output


def test_validate_accepts_a_good_file(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 0, result.output
    assert "ok (1 pool(s): web)" in result.output


def test_missing_and_binary_files_are_clear_errors(tmp_path: Path) -> None:
    runner = CliRunner()
    missing = runner.invoke(main, ["validate", str(tmp_path / "nope.yaml")])
    assert missing.exit_code == 2 and "cannot read the file" in missing.output
    binary = tmp_path / "b.yaml"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    result = runner.invoke(main, ["validate", str(binary)])
    assert result.exit_code == 2 and "not UTF-8" in result.output


def test_validate_runs_as_a_real_process_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(GOOD.replace("max_capacity", "max_capacty"))
    proc = subprocess.run(
        [sys.executable, "-m", "autoscaler.cli", "validate", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    # one mistake, one line: the misspelt key is not also reported as a missing field
    assert proc.stderr.splitlines() == [
        f"{path}:3:5: pools[0].max_capacty: unknown key 'max_capacty': did you mean 'max_capacity'?"
    ]


def test_schema_is_json_and_forbids_unknown_keys() -> None:
    result = CliRunner().invoke(main, ["schema"])
    assert result.exit_code == 0
    schema = json.loads(result.output)
    assert schema["additionalProperties"] is False
    assert "Pool" in schema["$defs"] and schema["$defs"]["Pool"]["additionalProperties"] is False


def test_default_policy_is_valid_and_shows_a_fallback() -> None:
    policy = load_default_policy().policy
    pool = policy.pools[0]
    first = pool.candidates[0]
    sim = policy.clouds.simulated
    assert sim is not None
    out_of_capacity = [c for c in sim.capacity if c.instance_type == first.instance_type and c.available == 0]
    assert out_of_capacity, "the demo's first-ranked offering has no capacity, so a newcomer sees a fallback"
    assert any(m.type == "synthetic" and m.bursts for m in pool.metrics)


def _field_names(model: type[BaseModel], seen: set[type[BaseModel]]) -> set[str]:
    names: set[str] = set()
    if model in seen:
        return names
    seen.add(model)
    for name, info in model.model_fields.items():
        names.add(name)
        for sub in _models_in(info.annotation):
            names |= _field_names(sub, seen)
    return names


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in getattr(annotation, "__args__", ()) for m in _models_in(arg)]


def test_example_policy_is_valid_and_shows_every_option() -> None:
    path = ROOT / "deploy" / "policy.example.yaml"
    loaded = load_policy(path)
    assert loaded.policy.pools
    text = path.read_text()
    missing = sorted(n for n in _field_names(Policy, set()) if f"{n}:" not in text)
    assert not missing, f"deploy/policy.example.yaml does not show: {missing}"


def test_example_policy_through_validate(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["validate", str(ROOT / "deploy" / "policy.example.yaml")])
    assert result.exit_code == 0, result.output
    assert "ok (3 pool(s): llama-70b, whisper, embeddings)" in result.output


def test_every_key_of_the_example_misspelt_gives_a_suggestion_not_a_crash() -> None:
    """Misspell each key of the full example in turn: always one clean error naming the key, with a hint."""
    text = (ROOT / "deploy" / "policy.example.yaml").read_text()
    keys = sorted(set(re.findall(r"^\s*-?\s*([a-z_]+):", text, flags=re.MULTILINE)))
    assert len(keys) > 60
    for key in keys:
        bad = re.sub(rf"^(\s*-?\s*){key}:", rf"\g<1>{key}x:", text, count=1, flags=re.MULTILINE)
        with pytest.raises(PolicyError) as err:
            parse_policy(bad, "example.yaml")
        lines = str(err.value).splitlines()
        if key == "type":  # the union's tag: without it pydantic cannot know which fields to expect
            line = next(i for i, ln in enumerate(text.splitlines(), 1) if ln.strip() == "- name: queue")
            assert lines == [
                f"example.yaml:{line}:9: pools[0].metrics[0]: 'type' is missing: it says which kind of entry this is"
            ]
            continue
        hinted = [ln for ln in lines if f"unknown key '{key}x'" in ln]
        assert hinted, (key, lines)
        assert f"did you mean '{key}'?" in hinted[0], (key, hinted)
