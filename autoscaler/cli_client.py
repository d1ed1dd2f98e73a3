"""`gpu-autoscaler status` and `explain`: read the admin API over HTTP and print it for a person.

The CLI talks to a running daemon only through its admin API (never to the database), so it works the same
against a local daemon, a container or a remote replica. Exit codes: 0 done, 1 the API answered with an error,
2 the API could not be reached (an invalid URL included). Every string that came from the daemon is printed with
markup off, so a reason like "[zone scope]" is shown as written rather than read as rich markup.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx
from rich.console import Console
from rich.table import Table

TIMEOUT_SECONDS = 10.0
EXIT_OK, EXIT_API_ERROR, EXIT_UNREACHABLE = 0, 1, 2


class _Unreachable(Exception):
    pass


class _ApiError(Exception):
    pass


def _get(client: httpx.Client, path: str) -> Any:
    try:
        resp = client.get(path)
    except httpx.TransportError as exc:  # refused, timed out, DNS, TLS, a scheme httpx cannot speak
        raise _Unreachable(str(exc) or type(exc).__name__) from None
    except UnicodeError as exc:  # a host name the resolver cannot encode (a label over 63 characters)
        raise _Unreachable(f"bad host name ({exc})") from None
    except httpx.HTTPError as exc:  # it answered, but not in a way httpx could read (a bad encoding, say)
        raise _ApiError(f"{path}: unreadable answer ({type(exc).__name__}: {exc})") from None
    try:
        body = resp.json()
    except ValueError:
        raise _ApiError(f"{path} answered {resp.status_code} with a body that is not JSON") from None
    if resp.status_code >= 400:
        message = body.get("error") if isinstance(body, dict) else None
        raise _ApiError(f"{resp.status_code}: {message or body}")
    return body


def _fetch(base_url: str, console: Console, *paths: str) -> list[Any] | int:
    """The JSON bodies of `paths`, or the exit code after printing one line about what went wrong."""
    try:
        with httpx.Client(base_url=base_url, timeout=TIMEOUT_SECONDS) as client:
            return [_get(client, p) for p in paths]
    except httpx.InvalidURL as exc:  # "http://[::1", ":::": raised by httpx.Client() itself, before any request
        _say(
            console,
            f"cannot reach the gpu-autoscaler admin API: {base_url!r} is not a valid URL ({exc})",
            style="red",
        )
        return EXIT_UNREACHABLE
    except _Unreachable as exc:
        _say(console, f"cannot reach the gpu-autoscaler admin API at {base_url}: {exc}", style="red")
        return EXIT_UNREACHABLE
    except _ApiError as exc:
        _say(console, f"the admin API at {base_url} refused: {exc}", style="red")
        return EXIT_API_ERROR


def _say(console: Console, text: str, style: str | None = None) -> None:
    console.print(text, style=style, markup=False, highlight=False, soft_wrap=True)


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    s = int(seconds)
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    return f"{s // 3600}h{(s % 3600) // 60:02d}m"


def _controls(pool: dict[str, Any]) -> str:
    parts = []
    if pool.get("paused"):
        parts.append("paused")
    override = pool.get("override")
    if override:
        parts.append(f"override {_num(override['capacity'])} ({_duration(override['seconds_left'])} left)")
    return ", ".join(parts) or "-"


def _sources_cell(pool: dict[str, Any]) -> str:
    """How many of the pool's metric sources are up ("1/2 up"), and "HOLDING" when the pool holds."""
    sources = pool.get("sources") or []
    words = [f"{sum(1 for s in sources if s.get('up'))}/{len(sources)} up"] if sources else []
    if pool.get("holding"):
        words.append("HOLDING")
    return ", ".join(words) or "-"


def _source_words(src: dict[str, Any]) -> str:
    up = src.get("up")
    state = "not read yet" if up is None else "DOWN" if not up else "STALE" if src.get("stale") else "up"
    words = [f"{src['name']} ({src.get('type', '?')}, {src.get('kind', '?')}): {state}"]
    if src.get("value") is not None:
        words.append(f"value {_num(src['value'])}")
    if src.get("age_seconds") is not None:
        words.append(f"newest reading {_duration(src['age_seconds'])} old")
    text = ", ".join(words)
    error = src.get("error") or ""
    return f"{text}; {error}" if error and error != "not read yet" else text


def status_table(base_url: str, console: Console) -> int:
    fetched = _fetch(base_url, console, "/v1/pools", "/v1/capacity")
    if isinstance(fetched, int):
        return fetched
    pools, capacity = fetched

    table = Table(title="Pools", title_justify="left")
    columns = ("Pool", "Desired", "Ready", "Booting", "Spend $/h", "Signal", "Sources", "Control", "Last decision")
    for column in columns:
        table.add_column(
            column, justify="right" if column in ("Desired", "Ready", "Booting", "Spend $/h") else "left"
        )
    for p in pools:
        age = p.get("last_decision_age_seconds")
        table.add_row(
            p["name"],
            _num(p.get("desired")),
            _num(p.get("ready")),
            _num(p.get("booting")),
            "-" if p.get("spend_usd_per_hour") is None else f"{p['spend_usd_per_hour']:.2f}",
            p.get("signal") or "-",
            _sources_cell(p),
            _controls(p),
            "never" if age is None else f"{_duration(age)} ago",
        )
    if pools:
        console.print(table)
        for p in pools:
            if p.get("holding"):
                _say(console, f"Pool {p['name']} is holding its capacity: {p.get('hold_reason') or '?'}", "yellow")
    else:
        _say(console, "The policy in force has no pools.")

    blocked = capacity.get("blocked", [])
    if not blocked:
        _say(console, "No offerings are blocked.")
        return EXIT_OK
    blocks = Table(title="Blocked offerings", title_justify="left")
    for column in ("Offering", "Scope", "Kind", "Failures", "Left", "Reason"):
        blocks.add_column(column)
    for b in blocked:
        where = {"zone": b["zone"], "region": b["region"]}.get(b["scope"], b["cloud"])
        blocks.add_row(
            f"{b['cloud']}/{where}/{b['instance_type']}/{b['market']}",
            b["scope"],
            b["kind"],
            str(b["failures"]),
            _duration(b["seconds_left"]),
            b.get("reason") or "-",
        )
    console.print(blocks)
    return EXIT_OK


def explain(base_url: str, pool: str, console: Console) -> int:
    fetched = _fetch(base_url, console, f"/v1/pools/{quote(pool, safe='')}/explain")
    if isinstance(fetched, int):
        return fetched
    (body,) = fetched
    d = body.get("decision")
    if d is None:
        _say(console, f"Pool {pool}: no decision recorded yet (the daemon has not finished a tick for it).")
    else:
        _say(console, f"Pool {pool}: last decision {_duration(d['age_seconds'])} ago, at {d['at']}.", style="bold")
        _say(
            console,
            f"It wants {_num(d['desired'])} capacity units: {_num(d['ready'])} ready, {_num(d['booting'])} booting, "
            f"{_num(d['draining'])} draining, costing ${d['spend_usd_per_hour']:.2f}/h.",
        )
        _say(console, f"Signal that drove it: {d['signal']}" if d["signal"] else "No demand signal drove it.")
        _bullets(console, "Why:", d["reasons"])
        _bullets(console, "Chosen:", d["chosen"], none="Chosen: nothing new (no launch was needed or possible).")
        _bullets(
            console,
            "Skipped:",
            [f"{s['offering']}: {s['reason']}" for s in d["skipped"]],
            none="Skipped: no offering was passed over.",
        )
    sources = body.get("sources", [])
    if sources:
        read = body.get("sources_read_at")
        _bullets(
            console,
            f"Metric sources (read at {read}):" if read else "Metric sources:",
            [_source_words(src) for src in sources],
        )
    else:
        _say(console, "Metric sources: none configured.")
    if body.get("holding"):
        _say(
            console,
            f"The pool is HOLDING its capacity until the data is good again: {body.get('hold_reason') or '?'}",
            "yellow",
        )
    elif sources and body.get("sources_read_at"):
        _say(console, "Not holding: the pool scales on its sources.")
    _say(console, f"Operator controls: {_control_words(body['control'])}.")
    events = body.get("capacity_events", [])
    _bullets(
        console,
        "Recent capacity events:",
        [_event_words(e) for e in events],
        none="Recent capacity events: none.",
    )
    return EXIT_OK


def _bullets(console: Console, title: str, items: list[str], none: str | None = None) -> None:
    if not items:
        if none is not None:
            _say(console, none)
        return
    _say(console, title)
    for item in items:
        _say(console, f"  - {item}")


def _control_words(control: dict[str, Any]) -> str:
    words = []
    if control.get("paused"):
        words.append("paused")
    override = control.get("override")
    if override:
        words.append(
            f"capacity overridden to {_num(override['capacity'])} units "
            f"for {_duration(override['seconds_left'])} more"
        )
    return "; ".join(words) or "none"


def _event_words(e: dict[str, Any]) -> str:
    o = e["offering"]
    where = {"zone": o["zone"], "region": o["region"]}.get(e["scope"], o["cloud"])
    text = f"{e['at']} {e['kind']} failure on {o['cloud']}/{where}/{o['instance_type']}/{o['market']} ({e['scope']} scope)"
    return f"{text}: {e['message']}" if e.get("message") else text
