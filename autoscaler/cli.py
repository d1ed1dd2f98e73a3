"""gpu-autoscaler: run | validate | schema | status | explain | prices | simulate."""

from __future__ import annotations

import importlib
import json
import logging
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from autoscaler import __version__
from autoscaler.config import Policy
from autoscaler.errors import ProviderError
from autoscaler.policyfile import LoadedPolicy, PolicyError, load_default_policy, load_policy

if TYPE_CHECKING:
    from autoscaler.store import Store

DEFAULT_ADMIN_URL = "http://127.0.0.1:8321"
PRICED_CLOUDS = ("aws", "gcp", "azure")  # each has providers/<cloud>_prices.py with run_refresh()


def default_state_dir() -> Path:
    """systemd's StateDirectory= sets $STATE_DIRECTORY; otherwise the XDG state home."""
    if env := os.environ.get("STATE_DIRECTORY"):
        return Path(env.split(":")[0])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "gpu-autoscaler"


def _load(policy: Path | None) -> LoadedPolicy:
    try:
        return load_policy(policy) if policy is not None else load_default_policy()
    except PolicyError as exc:
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(2)


ADMIN_TOKEN_CREDENTIAL = "admin-token"  # systemd: LoadCredential=admin-token:/etc/gpu-autoscaler/admin-token


def read_admin_token(policy: Policy) -> str | None:
    """The admin token: $<token_env>, else token_file, else systemd's credential `admin-token`
    ($CREDENTIALS_DIRECTORY/admin-token, from LoadCredential= in the unit), else none (read-only API)."""
    admin = policy.daemon.admin
    if token := os.environ.get(admin.token_env, "").strip():
        return token
    token_file = admin.token_file
    if token_file is None and (credentials := os.environ.get("CREDENTIALS_DIRECTORY")):
        candidate = Path(credentials) / ADMIN_TOKEN_CREDENTIAL
        token_file = candidate if candidate.is_file() else None
    if token_file is not None:
        try:
            return token_file.read_text(encoding="utf-8").strip() or None
        except OSError as exc:
            raise click.ClickException(f"cannot read the admin token file {token_file}: {exc.strerror}") from None
    return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="gpu-autoscaler")
def main() -> None:
    """Multi-cloud GPU autoscaler daemon."""


@main.command()
@click.option(
    "--policy", type=click.Path(dir_okay=False, path_type=Path), help="policy YAML (default: built-in demo)"
)
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), help="where the SQLite database lives"
)
@click.option("--admin", "admin", metavar="HOST:PORT", help="admin API address (overrides the policy)")
@click.option("--log-level", default="INFO", type=click.Choice(["DEBUG", "INFO", "WARNING", "ERROR"]))
@click.option(
    "--dry-run", is_flag=True, help="shadow mode: plan and record decisions, never launch or terminate anything"
)
def run(policy: Path | None, state_dir: Path | None, admin: str | None, log_level: str, dry_run: bool) -> None:
    """Run the daemon until SIGTERM. SIGHUP reloads the policy file."""
    from autoscaler.clock import SystemClock
    from autoscaler.daemon import Daemon
    from autoscaler.runner import Runner
    from providers import build_providers

    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apscheduler").setLevel(logging.WARNING)  # it logs every run of the tick job at INFO
    loaded = _load(policy)
    settings = loaded.policy.daemon
    listen = admin or settings.admin.listen
    host, _, port_text = listen.rpartition(":")
    if not host or not port_text.isdigit():
        raise click.BadParameter(f"expected HOST:PORT, got {listen!r}", param_hint="--admin")
    state = state_dir or default_state_dir()
    state.mkdir(parents=True, exist_ok=True)
    url = settings.database_url or f"sqlite:///{state / 'autoscaler.db'}"
    token = read_admin_token(loaded.policy)
    clock = SystemClock()
    single_node = _single_node_lock(url)  # noqa: F841 (held, not used: released when the process ends)
    store = _open_store(url)
    try:
        daemon = Daemon(
            loaded,
            store=store,
            clock=clock,
            provider_factory=lambda p: build_providers(p, clock, state_dir=state),
            policy_path=policy,
            dry_run=dry_run,
        )
    except ProviderError as exc:  # a cloud or source that cannot be built: say which, and how to fix it
        store.close()
        raise click.ClickException(f"{loaded.source}: {exc}") from None
    runner = Runner(daemon, host.strip("[]"), int(port_text), token)
    try:
        runner.start()
    except RuntimeError as exc:
        store.close()
        raise click.ClickException(str(exc)) from None
    logging.getLogger("autoscaler").info(
        "%srunning policy %s; state in %s; admin API on http://%s%s",
        "DRY RUN (nothing is launched or terminated): " if dry_run else "",
        loaded.source,
        state,
        listen,
        "" if token else f" (read-only: set {settings.admin.token_env} to enable mutating calls)",
    )
    runner.install_signal_handlers()
    if not runner.wait():
        sys.exit(1)  # not a clean stop: let systemd's Restart=on-failure (or the orchestrator) restart us


def _open_store(url: str) -> Store:
    """Open (and migrate) the state database, or exit with one line saying what is wrong with it."""
    from sqlalchemy.exc import ArgumentError, OperationalError

    from autoscaler.store import Store

    try:
        return Store.open(url)
    except (ValueError, ArgumentError) as exc:
        raise click.ClickException(f"daemon.database_url: {exc}") from None
    except OperationalError as exc:  # unreachable server, bad credentials, unwritable file
        reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
        raise click.ClickException(f"cannot open the state database: {reason}") from None


def _single_node_lock(url: str) -> object:
    """SQLite is single-node: hold an exclusive lock beside the database file for the life of the process; a
    second daemon on the same file exits 2 with a message saying why (high availability needs PostgreSQL)."""
    from sqlalchemy.exc import ArgumentError

    from autoscaler.leader import AlreadyRunning, SingleNodeLock
    from autoscaler.store.engine import normalise_url

    try:
        parsed = normalise_url(url)
    except ArgumentError as exc:
        raise click.ClickException(f"daemon.database_url: {exc}") from None
    if parsed.get_backend_name() != "sqlite" or parsed.database in (None, "", ":memory:"):
        return None
    try:
        return SingleNodeLock(Path(parsed.database).expanduser().resolve())
    except AlreadyRunning as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


@main.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
def validate(file: Path) -> None:
    """Check a policy file: one line per problem with file:line:column, exit 2 if any."""
    loaded = _load(file)
    pools = ", ".join(p.name for p in loaded.policy.pools) or "none"
    click.echo(f"{file}: ok ({len(loaded.policy.pools)} pool(s): {pools})")


@main.command()
def schema() -> None:
    """Print the policy file's JSON Schema (for editors: yaml-language-server)."""
    click.echo(json.dumps(Policy.model_json_schema(), indent=2))


@main.command()
@click.option("--admin", "base_url", default=DEFAULT_ADMIN_URL, show_default=True, help="admin API base URL")
def status(base_url: str) -> None:
    """Pools, capacity, spend and blocked offerings, from the admin API."""
    from autoscaler.cli_client import status_table

    sys.exit(status_table(_url(base_url), Console()))


@main.command()
@click.argument("pool")
@click.option("--admin", "base_url", default=DEFAULT_ADMIN_URL, show_default=True, help="admin API base URL")
def explain(pool: str, base_url: str) -> None:
    """Why the pool's last decision: what was chosen, what was skipped and why."""
    from autoscaler.cli_client import explain as explain_pool

    sys.exit(explain_pool(_url(base_url), pool, Console()))


@main.group()
def prices() -> None:
    """Price catalogs."""


@prices.command("refresh")
@click.option("--policy", type=click.Path(dir_okay=False, path_type=Path), help="policy YAML (regions, types)")
@click.option("--state-dir", type=click.Path(file_okay=False, path_type=Path), help="where refreshed prices go")
@click.option(
    "--cloud", "clouds", multiple=True, type=click.Choice(PRICED_CLOUDS), help="default: every one enabled"
)
def prices_refresh(policy: Path | None, state_dir: Path | None, clouds: tuple[str, ...]) -> None:
    """Refresh on-demand prices from the clouds' price APIs; where that fails, the shipped catalog stays."""
    loaded = _load(policy)
    wanted = clouds or tuple(c for c in PRICED_CLOUDS if c in loaded.policy.clouds.enabled())
    if not wanted:
        click.echo("no cloud with a price catalog is enabled in the policy (name one with --cloud)")
        return
    console = Console()
    worst = 0
    for cloud in wanted:
        try:  # the module, or the SDK it imports when called, may be missing
            refresh = importlib.import_module(f"providers.{cloud}_prices").run_refresh
            code = int(refresh(loaded.policy, state_dir or default_state_dir(), console))
        except ImportError as exc:
            raise click.ClickException(
                f"the {cloud} provider needs {exc.name}: pip install 'gpu-autoscaler[{cloud}]'"
            ) from None
        worst = max(worst, code)
    sys.exit(worst)


@main.command()
@click.argument("scenario", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out", "out", required=True, type=click.Path(file_okay=False, path_type=Path), help="output folder"
)
@click.option("--progress/--no-progress", default=True, help="show a progress bar (default: on)")
def simulate(scenario: Path, out: Path, progress: bool) -> None:
    """Replay a scenario's traces through the daemon's policies: summary.json, timeline.csv, plot.png in OUT."""
    import time

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from autoscaler.sim import ScenarioError, load_scenario, run_scenario, write_outputs
    from autoscaler.sim.runner import plan_ticks
    from autoscaler.sim.traces import TraceError

    try:
        loaded = load_scenario(scenario)
    except PolicyError as exc:  # the scenario's or its policy file's, each line with file:line:column
        for issue in exc.issues:
            click.echo(str(issue), err=True)
        sys.exit(2)
    _, ticks = plan_ticks(loaded)
    total = ticks * len(loaded.scenario.policies)
    started = time.perf_counter()
    try:
        if progress:
            columns = (TextColumn("simulating"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
            with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
                task = bar.add_task("ticks", total=total)
                runs = run_scenario(loaded, lambda n: bar.advance(task, n))
        else:
            runs = run_scenario(loaded)
    except (TraceError, ScenarioError) as exc:
        click.echo(f"{scenario}: {exc}", err=True)
        sys.exit(2)
    from autoscaler.sim.b3 import attach_b3

    b3 = attach_b3(loaded, runs).summary()
    paths = write_outputs(loaded, runs, out, b3)
    for run in runs:
        s = run.summary
        click.echo(
            f"{run.name}: ${s['cost_usd']:.2f}, SLO attainment {s['slo_attainment']:.3f}, "
            f"dropped {s['dropped_fraction']:.3f}, availability {s['availability']:.3f}, "
            f"{s['launches']} launches, {s['preemptions']} preemptions; "
            f"{s['ticks']} ticks in {run.wall_seconds:.2f} s ({run.ticks_per_second:,.0f} ticks/s)"
            + (f", {s['cost_vs_b3']:.2f}x B3" if s.get("cost_vs_b3") is not None else "")
        )
    bound = "upper bound" if b3["cost_is_upper_bound"] else "optimum"
    aggregated = f", aggregated x{b3['aggregated_factor']}" if b3["aggregated_factor"] > 1 else ""
    click.echo(
        f"B3 (offline optimum, perfect foresight): ${b3['cost_usd']:.2f} ({bound}, {b3['status']}{aggregated}), "
        f"lower bound ${b3['lower_bound_usd']:.2f}, unmet {b3['unmet_unit_ticks']:.3g} unit-ticks, "
        f"solved in {b3['solve_seconds']:.1f} s"
    )
    click.echo(f"wrote {', '.join(str(p) for p in paths.values())} in {time.perf_counter() - started:.1f} s")


def _url(base: str) -> str:
    return base if "://" in base else f"http://{base}"


if __name__ == "__main__":
    main()
