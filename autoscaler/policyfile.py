"""Load a policy file, turning every error into one line with file:line:column and the field's path.

PyYAML's composer keeps a mark (line, column) on every node; we build plain data from the node tree while
remembering each path's mark, so a pydantic error location like ('pools', 0, 'candidates', 1, 'throughput')
can be pointed back at the exact place in the file.
"""

from __future__ import annotations

import difflib
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_args

import yaml
from pydantic import BaseModel, ValidationError

from autoscaler.config import Policy, semantic_errors

Loc = tuple[str | int, ...]


@dataclass(frozen=True)
class PolicyIssue:
    file: str
    line: int
    column: int
    path: str
    message: str

    def __str__(self) -> str:
        where = f"{self.path}: " if self.path else ""
        return f"{self.file}:{self.line}:{self.column}: {where}{self.message}"


class PolicyError(Exception):
    """A policy file that cannot be used; `issues` holds one line per problem."""

    def __init__(self, issues: list[PolicyIssue]) -> None:
        super().__init__("\n".join(str(i) for i in issues))
        self.issues = issues


@dataclass(frozen=True)
class LoadedPolicy:
    policy: Policy
    source: str  # the file name, or "<built-in>"
    text: str
    sha256: str


def format_loc(loc: Loc) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


_UNREADABLE = object()


class _Builder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.marks: dict[Loc, tuple[int, int]] = {}
        self.issues: list[PolicyIssue] = []

    def build(self, node: yaml.Node, loc: Loc) -> Any:
        self.marks[loc] = (node.start_mark.line + 1, node.start_mark.column + 1)
        if isinstance(node, yaml.MappingNode):
            out: dict[Any, Any] = {}
            for key_node, value_node in node.value:
                key = self._scalar(key_node, loc) if isinstance(key_node, yaml.ScalarNode) else None
                if key is _UNREADABLE:
                    continue
                if not isinstance(key, str | int | float | bool):
                    self._issue(key_node, loc, "mapping keys must be plain scalars")
                    continue
                skey = str(key)
                if skey in out:
                    self._issue(key_node, (*loc, skey), f"duplicate key {skey!r}")
                out[skey] = self.build(value_node, (*loc, skey))
                # a key's mark is more useful than its value's for "unknown key" errors
                self.marks[(*loc, skey, "__key__")] = (
                    key_node.start_mark.line + 1,
                    key_node.start_mark.column + 1,
                )
            return out
        if isinstance(node, yaml.SequenceNode):
            return [self.build(item, (*loc, i)) for i, item in enumerate(node.value)]
        value = self._scalar(node, loc)
        return None if value is _UNREADABLE else value

    def _scalar(self, node: yaml.Node, loc: Loc) -> Any:
        try:
            return _scalar(node)
        except yaml.YAMLError as exc:  # e.g. a merge key (<<), or a tag SafeLoader cannot construct
            problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
            if node.tag == "tag:yaml.org,2002:merge":
                problem = "merge keys (<<) are not supported: write the keys out"
            self._issue(node, loc, f"cannot read this value: {problem}")
            return _UNREADABLE

    def _issue(self, node: yaml.Node, loc: Loc, message: str) -> None:
        self.issues.append(
            PolicyIssue(self.name, node.start_mark.line + 1, node.start_mark.column + 1, format_loc(loc), message)
        )

    def mark_for(self, loc: Loc) -> tuple[int, int]:
        """The best mark for a pydantic location: its key if present, else the closest enclosing node.

        Parts of `loc` that are not in the data (a discriminated union's tag) are skipped."""
        data_loc: Loc = ()
        best = self.marks.get((), (1, 1))
        for part in loc:
            candidate = (*data_loc, part)
            if candidate in self.marks:
                data_loc = candidate
                best = self.marks.get((*candidate, "__key__"), self.marks[candidate])
        return best


def _scalar(node: yaml.Node) -> Any:
    """Resolve one scalar node the way yaml.safe_load would (ints, floats, bools, nulls, strings)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_object(node, deep=True)
    finally:
        loader.dispose()


# Policy files nest a handful of levels; PyYAML's composer (and _Builder) recurse once per level, so a hostile
# or broken file nested thousands deep would end in RecursionError. Checked first, on the flat event stream.
MAX_NESTING = 64


def _check_nesting(text: str, name: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_NESTING:
                mark = event.start_mark
                line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
                message = f"nested more than {MAX_NESTING} levels deep: a policy file needs far fewer"
                raise PolicyError([PolicyIssue(name, line, col, "", message)])
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _yaml_issue(exc: yaml.YAMLError, text: str, name: str) -> PolicyIssue:
    if isinstance(exc, yaml.MarkedYAMLError):
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        problem = exc.problem or exc.context or "invalid YAML"
        return PolicyIssue(name, line, col, "", f"invalid YAML: {problem}")
    if isinstance(exc, yaml.reader.ReaderError):  # a character YAML does not allow (NUL, most controls)
        pos = min(max(exc.position, 0), len(text))
        line = text.count("\n", 0, pos) + 1
        col = pos - (text.rfind("\n", 0, pos) + 1) + 1
        char = exc.character if isinstance(exc.character, str) else chr(exc.character)
        return PolicyIssue(name, line, col, "", f"invalid YAML: character U+{ord(char):04X} is not allowed")
    return PolicyIssue(name, 1, 1, "", f"invalid YAML: {exc}")


def parse_policy(text: str, name: str) -> LoadedPolicy:
    """Parse and validate policy text; raise PolicyError with every problem found."""
    builder = _Builder(name)
    try:
        _check_nesting(text, name)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        raise PolicyError([_yaml_issue(exc, text, name)]) from None
    except RecursionError:  # a safety net: _check_nesting should have refused the file already
        raise PolicyError([PolicyIssue(name, 1, 1, "", "invalid YAML: nested too deeply")]) from None
    data = {} if node is None else builder.build(node, ())
    if builder.issues:
        raise PolicyError(builder.issues)
    if not isinstance(data, dict):
        raise PolicyError([PolicyIssue(name, 1, 1, "", "the policy must be a mapping at the top level")])
    try:
        policy = Policy.model_validate(data)
    except ValidationError as exc:
        issues = []
        for err, message in _explained(exc.errors(include_url=False)):
            loc: Loc = tuple(err["loc"])
            line, col = builder.mark_for(loc)
            issues.append(PolicyIssue(name, line, col, format_loc(_strip_tags(loc, builder)), message))
        raise PolicyError(sorted(issues, key=lambda i: (i.line, i.column))) from None
    semantic = semantic_errors(policy)
    if semantic:
        raise PolicyError(
            [PolicyIssue(name, *builder.mark_for(loc), format_loc(loc), msg) for loc, msg in semantic]
        )
    return LoadedPolicy(policy, name, text, hashlib.sha256(text.encode()).hexdigest())


def _strip_tags(loc: Loc, builder: _Builder) -> Loc:
    """Drop the discriminator parts pydantic adds (e.g. 'prometheus') so the path reads like the file."""
    out: Loc = ()
    for i, part in enumerate(loc):
        if (*out, part) in builder.marks or i == len(loc) - 1:
            out = (*out, part)
    return out


def _explained(errors: list[Any]) -> list[tuple[Any, str]]:
    """Each error with its message. A misspelt required key gives pydantic two errors (unknown key, missing
    field) for one mistake: they become one line, "unknown key 'x': did you mean 'y'?"."""
    missing = {tuple(e["loc"]): e for e in errors if e["type"] == "missing"}
    merged: set[Loc] = set()
    out: list[tuple[Any, str]] = []
    for err in errors:
        if err["type"] != "extra_forbidden":
            continue
        loc = tuple(err["loc"])
        key = str(loc[-1])
        siblings = {str(m[-1]): m for m in missing if m[:-1] == loc[:-1]}
        close = difflib.get_close_matches(key, list(siblings), n=1, cutoff=0.6)
        if close:
            merged.add(siblings[close[0]])
        else:
            close = difflib.get_close_matches(key, _fields_at(loc), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]!r}?" if close else "check the spelling; see `gpu-autoscaler schema`"
        out.append((err, f"unknown key {key!r}: {hint}"))
    out.extend(
        (e, _message(e)) for e in errors if e["type"] != "extra_forbidden" and tuple(e["loc"]) not in merged
    )
    return out


def _fields_at(loc: Loc) -> list[str]:
    """The keys allowed in the mapping that holds `loc`, walking the models along the path (list indexes, dict
    keys and discriminated-union tags are stepped over)."""
    models: list[type[BaseModel]] = [Policy]
    for part in loc[:-1]:
        if isinstance(part, int):
            continue
        owners = [m for m in models if part in m.model_fields]
        if owners:
            models = [sub for m in owners for sub in _models_in(m.model_fields[part].annotation)]
            continue
        tagged = [
            m for m in models if "type" in m.model_fields and part in get_args(m.model_fields["type"].annotation)
        ]
        if tagged:
            models = tagged
        # otherwise `part` is a dict key (an instance type's name): the models stay
    return sorted({name for m in models for name in m.model_fields})


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in get_args(annotation) for m in _models_in(arg)]


def _message(err: Any) -> str:
    kind = err["type"]
    if kind == "missing":
        return "required field is missing"
    msg = str(err["msg"])
    if kind == "union_tag_not_found":
        return f"{err['ctx']['discriminator']} is missing: it says which kind of entry this is"
    if kind == "union_tag_invalid":
        return msg
    if "input" in err and not isinstance(err["input"], dict | list):
        return f"{msg} (got {err['input']!r})"
    return msg


def load_policy(path: Path) -> LoadedPolicy:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError([PolicyIssue(str(path), 1, 1, "", f"cannot read the file: {exc.strerror}")]) from None
    except UnicodeDecodeError:
        raise PolicyError([PolicyIssue(str(path), 1, 1, "", "the file is not UTF-8 text")]) from None
    return parse_policy(text, str(path))


def default_policy_text() -> str:
    return (Path(__file__).parent / "default_policy.yaml").read_text(encoding="utf-8")


def load_default_policy() -> LoadedPolicy:
    return parse_policy(default_policy_text(), "<built-in default policy>")
