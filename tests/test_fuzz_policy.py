"""Property-based fuzzing of policy files: whatever the file holds (keys renamed or removed, values of the wrong
type, broken YAML syntax, random bytes, deep nesting, huge numbers, odd unicode), loading it either succeeds or
fails with PolicyError lines that each name file:line:column; never a traceback."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from autoscaler.cli import main
from autoscaler.policyfile import MAX_NESTING, PolicyError, default_policy_text, load_policy, parse_policy

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = (ROOT / "deploy" / "policy.example.yaml").read_text(encoding="utf-8")
SMALL = """daemon: {id: fuzz, tick_seconds: 5, limits: {max_instances: 4}}
clouds:
  simulated: {boot_seconds: 10}
pools:
  - name: llm
    max_capacity: 16
    metrics: [{name: q, type: synthetic, kind: queue, base: 40}]
    targets: {queue_per_unit: 5, latency_slo_seconds: 2}
    candidates:
      - {cloud: simulated, instance_type: sim.a100x8, market: spot, throughput: 8}
alerts:
  webhooks: [{name: hook, url: {env: HOOK_URL}}]
"""
BASES = [EXAMPLE, default_policy_text(), SMALL]

FUZZ = settings(max_examples=80, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])

ODD_VALUES = [
    "",
    "~",
    "null",
    "true",
    "no",
    "-1",
    "0",
    "1e400",
    "-1e400",
    ".inf",
    ".nan",
    "9" * 400,
    "-" + "9" * 60,
    "0x1F",
    "0o777",
    "2001-12-14",
    "2001-12-14T21:59:43.10-05:00",
    "[1, 2, 3]",
    "{a: 1}",
    "[]",
    "{}",
    "!!binary aGVsbG8=",
    "!!set {a, b}",
    "!!python/object:os.system {}",
    "&a x",
    "*a",
    "*undefined",
    "<<: {a: 1}",
    '"\\ud800"',
    '"\\u0000"',
    "'unterminated",
    '"unterminated',
    "|",
    ">-",
    "- a\n- b",
    "{",
    "]",
    "?",
    "'é漢字🙂'",
    "\u202e\u200b",
]


def check(exc: PolicyError, name: str, text: str) -> None:
    """Every issue names the file, a line inside it (or just past its end) and a column."""
    assert exc.issues, "a PolicyError says what is wrong"
    last_line = text.count("\n") + 2
    for issue in exc.issues:
        assert issue.file == name
        assert 1 <= issue.line <= last_line, (issue, last_line)
        assert issue.column >= 1 and issue.message
    for line in str(exc).splitlines():
        assert re.match(rf"^{re.escape(name)}:\d+:\d+: ", line), line


def load(tmp_path: Path, data: str | bytes) -> None:
    path = tmp_path / "policy.yaml"
    if isinstance(data, str):
        path.write_bytes(data.encode("utf-8", "surrogatepass"))
    else:
        path.write_bytes(data)
    try:
        load_policy(path)
    except PolicyError as exc:
        check(exc, str(path), data if isinstance(data, str) else data.decode("utf-8", "replace"))


KEY = re.compile(r"^(\s*-?\s*)([A-Za-z_][A-Za-z0-9_]*)(:)(.*)$")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    lines = draw(st.sampled_from(BASES)).splitlines()
    for _ in range(draw(st.integers(1, 4))):
        i = draw(st.integers(0, len(lines) - 1))
        line = lines[i]
        m = KEY.match(line)
        op = draw(
            st.sampled_from(
                ["rename", "remove", "value", "insert", "indent", "duplicate", "nest", "huge", "unicode"]
            )
        )
        if op == "rename" and m:
            new = draw(st.one_of(st.from_regex(r"[a-z_]{1,12}", fullmatch=True), st.text(max_size=8)))
            lines[i] = f"{m[1]}{new}{m[3]}{m[4]}"
        elif op == "remove":
            del lines[i]
            if not lines:
                lines = [""]
        elif op == "value" and m:
            lines[i] = f"{m[1]}{m[2]}: {draw(st.sampled_from(ODD_VALUES))}"
        elif op == "insert":
            col = draw(st.integers(0, len(line)))
            junk = draw(st.one_of(st.sampled_from(list(":-[]{}&*!|>'\"%@`#,?\t")), st.text(max_size=6)))
            lines[i] = line[:col] + junk + line[col:]
        elif op == "indent":
            shift = draw(st.integers(-4, 4))
            lines[i] = line[-shift:] if shift < 0 else " " * shift + line
        elif op == "duplicate":
            lines.insert(i, line)
        elif op == "nest" and m:
            depth = draw(st.integers(1, 3 * MAX_NESTING))
            opener, closer = draw(st.sampled_from([("[", "]"), ("{a: ", "}")]))
            lines[i] = f"{m[1]}{m[2]}: {opener * depth}1{closer * depth}"
        elif op == "huge" and m:
            digits = draw(st.integers(20, 2000))
            lines[i] = f"{m[1]}{m[2]}: {draw(st.sampled_from(['', '-']))}{'9' * digits}"
        elif op == "unicode":
            col = draw(st.integers(0, len(line)))
            lines[i] = line[:col] + draw(st.text(st.characters(codec=None), min_size=1, max_size=4)) + line[col:]
    return "\n".join(lines) + "\n"


@FUZZ
@given(text=mutated())
@example(text="pools: " + "[" * 5000 + "]" * 5000)
@example(text="\n".join(" " * i + f"k{i}:" for i in range(3000)))
@example(text="base: &b {id: x}\ndaemon: {<<: *b}\n")
@example(text="daemon: {tick_seconds: .inf}\n")
@example(text="daemon:\n  id: a\x00b\n")
def test_a_mutated_policy_loads_or_names_file_line_column(
    tmp_path_factory: pytest.TempPathFactory, text: str
) -> None:
    load(tmp_path_factory.mktemp("fuzz"), text)


@FUZZ
@given(data=st.binary(max_size=400))
@example(data=b"\xff\xfe\x00d\x00a")
@example(data="daemon: {id: é}".encode("latin-1"))
def test_random_bytes_never_give_a_traceback(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    load(tmp_path_factory.mktemp("bytes"), data)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(text=mutated())
def test_parse_policy_only_ever_raises_policy_error(text: str) -> None:
    try:
        parse_policy(text, "fuzz.yaml")
    except PolicyError as exc:
        check(exc, "fuzz.yaml", text)


def test_the_crashes_fuzzing_found_are_clean_errors_now() -> None:
    """What fuzzing found: deep nesting (RecursionError), merge keys (ConstructorError), infinities accepted (and
    an infinite tick interval), control characters reported at 1:1. Each now names its exact place."""
    cases = {
        "pools: " + "[" * 3000 + "]" * 3000: f"1:{7 + MAX_NESTING}: nested more than {MAX_NESTING} levels deep",
        "base: &b {id: x}\ndaemon: {<<: *b}\n": "2:10: daemon: cannot read this value: merge keys (<<)",
        "daemon:\n  tick_seconds: .inf\n": "2:3: daemon.tick_seconds: Input should be a finite number",
        "daemon:\n  tick_seconds: 1e400\n": "2:3: daemon.tick_seconds: Input should be a finite number",
        "daemon:\n  id: a\x00b\n": "2:8: invalid YAML: character U+0000 is not allowed",
    }
    for text, expected in cases.items():
        with pytest.raises(PolicyError) as err:
            parse_policy(text, "p.yaml")
        assert str(err.value).startswith(f"p.yaml:{expected}"), str(err.value)


@pytest.mark.parametrize(
    "data",
    [
        ("pools: " + "{a: " * 500 + "1" + "}" * 500).encode(),
        b"base: &b {id: x}\ndaemon: {<<: *b}\n",
        b"daemon:\n  tick_seconds: .inf\n",
        b"daemon:\n  id: a\x01b\n",
        b"\xff\xfe garbage",
        EXAMPLE.replace("max_capacity: 64", "max_capacity: " + "9" * 500).encode(),
        EXAMPLE.replace("  tick_seconds:", "  tick_secnds:").encode(),
    ],
    ids=["deep", "merge-key", "inf", "control-char", "not-utf8", "huge-number", "misspelt"],
)
def test_validate_command_prints_file_line_column_and_exits_2(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "policy.yaml"
    path.write_bytes(data)
    result = CliRunner().invoke(main, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    lines = result.output.splitlines()
    assert lines and all(re.match(rf"^{re.escape(str(path))}:\d+:\d+: ", ln) for ln in lines), lines
    assert "Traceback" not in result.output
