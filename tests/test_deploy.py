"""The deployment files, checked without a Docker engine (none runs here): docker-compose.yml's
topology and promises, and every file the Dockerfiles copy or run. The same topology runs as
local processes in the end-to-end tests."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]


def test_the_topology_is_complete():
    assert {"redis", "postgres", "app", "sidecar", "worker"} <= set(SERVICES)


@pytest.mark.parametrize("name", ["redis", "postgres", "app", "sidecar", "worker"])
def test_every_core_service_has_a_healthcheck_and_restarts(name):
    svc = SERVICES[name]
    assert svc["restart"] == "unless-stopped"
    check = svc["healthcheck"]["test"]
    assert check[0] == "CMD" and len(check) > 1


def test_startup_order_waits_on_health():
    deps = {name: svc.get("depends_on", {}) for name, svc in SERVICES.items()}
    assert deps["worker"]["redis"]["condition"] == "service_healthy"
    assert deps["worker"]["sidecar"]["condition"] == "service_healthy"
    assert deps["sidecar"]["app"]["condition"] == "service_healthy"
    assert deps["app"]["redis"]["condition"] == "service_healthy"


def test_the_worker_scales():
    worker = SERVICES["worker"]
    # a fixed container name or host port would make `--scale worker=3` fail
    assert "container_name" not in worker and "ports" not in worker
    # the stop grace period must cover the drain timeout (25 s) plus the hard-shutdown margin
    assert _seconds(worker["stop_grace_period"]) > 25 + 4
    assert _seconds(SERVICES["sidecar"]["stop_grace_period"]) > 25


def test_services_point_at_each_other():
    env = SERVICES["worker"]["environment"]
    assert env["REDIS_URL"].startswith("redis://redis:6379")
    assert env["FASTWORKER_SIDECAR_URL"] == "http://sidecar:3001"
    assert "3001" in SERVICES["sidecar"]["command"]
    for name in ("app", "sidecar"):
        assert SERVICES[name]["environment"]["REDIS_URL"] == env["REDIS_URL"]
        assert "@postgres:5432/" in SERVICES[name]["environment"]["DATABASE_URL"]


def test_the_worker_command_is_valid_for_the_cli():
    from fastworker.config import load_config
    cfg = load_config(list(SERVICES["worker"]["command"]), dict(SERVICES["worker"]["environment"]))
    assert cfg.sidecar_url == "http://sidecar:3001"
    assert cfg.http_port == 9394
    assert [q for q, _ in cfg.queues] == ["critical", "default", "low"]


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "deploy").glob("Dockerfile.*")))
def test_dockerfiles_copy_files_that_exist(dockerfile):
    copies = re.findall(r"^COPY (?!--from)(.+)$", dockerfile.read_text(), re.M)
    assert copies
    for line in copies:
        *sources, _dest = line.split()
        for src in sources:
            assert (ROOT / src).exists(), f"{dockerfile.name}: COPY {src} does not exist"


def test_compose_builds_reference_existing_dockerfiles():
    for name, svc in SERVICES.items():
        if "build" in svc:
            assert (ROOT / svc["build"]["context"] / svc["build"]["dockerfile"]).is_file(), name


def test_the_sidecar_command_runs_a_file_in_the_image():
    cmd = SERVICES["sidecar"]["command"]
    assert (ROOT / cmd[1]).is_file()
    assert (ROOT / "examples/rails_app/config.ru").is_file()


def test_monitoring_files_exist():
    prom = SERVICES["prometheus"]["volumes"][0].split(":")[0]
    assert (ROOT / prom).is_file()
    cfg = yaml.safe_load((ROOT / prom).read_text())
    targets = [t for job in cfg["scrape_configs"] for sc in job.get("static_configs", []) for t in sc["targets"]]
    assert any(t.startswith("sidecar:") for t in targets)
    jobs = {job["job_name"] for job in cfg["scrape_configs"]}
    assert any("worker" in j for j in jobs)
    assert list((ROOT / "deploy/grafana").glob("*.json"))


def _seconds(value: str) -> float:
    m = re.fullmatch(r"(\d+)s", str(value))
    assert m, value
    return float(m.group(1))


def test_the_sidecar_is_reachable_only_on_an_internal_network_and_signed():
    """Issue 12: no published port, internal networks only, the secret as a compose secret."""
    sidecar = SERVICES["sidecar"]
    assert "ports" not in sidecar
    networks = COMPOSE["networks"]
    assert sidecar["networks"] and all(networks[n].get("internal") for n in sidecar["networks"])
    # a file: compose v1 cannot read `environment:` secrets, and a file works in v1 and v2 alike
    assert set(COMPOSE["secrets"]["sidecar_secret"]) == {"file"}
    for name in ("sidecar", "worker"):
        svc = SERVICES[name]
        assert svc["secrets"] == ["sidecar_secret"]
        assert svc["environment"]["FASTWORKER_SIDECAR_SECRET_FILE"] == "/run/secrets/sidecar_secret"
        assert "FASTWORKER_SIDECAR_SECRET" not in svc["environment"], "never the value itself"


@pytest.mark.parametrize("dockerfile", sorted((ROOT / "deploy").glob("Dockerfile.*"))
                         + [ROOT / "deploy/standins/Dockerfile.redis", ROOT / "deploy/standins/Dockerfile.postgres"],
                         ids=lambda p: p.name)
def test_images_run_as_a_non_root_user(dockerfile):
    """The last stage's last USER names a user that is not root (issue 13)."""
    last_stage = re.split(r"^FROM ", dockerfile.read_text(), flags=re.M)[-1]
    users = re.findall(r"^USER (\S+)", last_stage, re.M)
    assert users and users[-1] not in ("root", "0"), dockerfile.name


def test_compose_binds_published_ports_to_loopback():
    """The stack publishes nothing on the machine's other addresses, and a port moves with an
    environment variable, so a test stack never collides with the machine's own services."""
    for name, svc in SERVICES.items():
        for port in svc.get("ports", []):
            assert re.fullmatch(r"127\.0\.0\.1:\$\{FASTWORKER_\w+_PORT:-\d+\}:\d+", port), (name, port)
    assert "redis" not in {n for n, s in SERVICES.items() if "ports" in s}
    assert "postgres" not in {n for n, s in SERVICES.items() if "ports" in s}


def test_compose_ci_override_only_shortens_recovery():
    ci = yaml.safe_load((ROOT / "deploy/compose.ci.yml").read_text())
    assert set(ci["services"]) == {"worker"}
    env = ci["services"]["worker"]["environment"]
    assert int(env["FASTWORKER_PROCESS_TTL"]) > float(env["FASTWORKER_HEARTBEAT_INTERVAL"])


def test_grafana_is_provisioned_with_the_dashboard_and_prometheus():
    """The monitoring profile: Grafana's provisioning finds the dashboard where compose mounts it
    and queries the Prometheus service (make compose-test runs Prometheus itself; Grafana has no
    image buildable from Debian packages, so it is checked here)."""
    grafana = SERVICES["grafana"]
    mounts = dict(v.split(":")[:2] for v in grafana["volumes"])
    provisioning = ROOT / next(h for h, c in mounts.items() if c == "/etc/grafana/provisioning")
    provider = yaml.safe_load((provisioning / "dashboards/fastworker.yml").read_text())["providers"][0]
    dash_dir = next(h for h, c in mounts.items() if c == provider["options"]["path"])
    assert list((ROOT / dash_dir).glob("*.json"))
    ds = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())["datasources"][0]
    prom = SERVICES["prometheus"]
    assert ds["type"] == "prometheus" and ds["url"] == "http://prometheus:9090"
    assert set(grafana["networks"]) & set(prom["networks"])
    assert grafana["profiles"] == prom["profiles"] == ["monitoring"]
    # Prometheus reaches the workers and the sidecar on the internal network
    assert "backend" in prom["networks"]


COMPOSE_SPEC = Path("/usr/lib/python3/dist-packages/compose/config/compose_spec.json")


@pytest.mark.skipif(not COMPOSE_SPEC.exists(), reason="needs Debian's docker-compose (make compose-test installs it)")
@pytest.mark.parametrize("path", ["docker-compose.yml", "deploy/compose.ci.yml"])
def test_the_compose_files_follow_the_compose_specification(path):
    """Compose v2 (`docker compose`, on users' machines) reads the Compose Specification; v1 here
    reads the same file, but a v1-only key would pass its run and fail under v2. The schema is the
    one docker-compose 1.29 ships (compose-spec's, JSON Schema 2019-09)."""
    import json

    import jsonschema
    schema = json.loads(COMPOSE_SPEC.read_text())
    data = yaml.safe_load((ROOT / path).read_text())
    errors = sorted(jsonschema.Draft201909Validator(schema).iter_errors(data), key=lambda e: list(e.path))
    assert not errors, [f"{'/'.join(map(str, e.path))}: {e.message}" for e in errors]


def test_the_monitoring_check_reads_every_dashboard_query_as_grafana_fills_it():
    """scripts/check_monitoring.py (run by make compose-test against the stack's real Prometheus)
    sends every panel's query with "All" filled in, and knows which metrics each one reads."""
    import json
    import sys

    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        import check_monitoring as check
    finally:
        sys.path.pop(0)
    dashboard = json.loads((ROOT / "deploy/grafana/fastworker.json").read_text())
    queries = check.dashboard_queries(dashboard)
    raw = re.findall(r'"expr":', (ROOT / "deploy/grafana/fastworker.json").read_text())
    assert len(queries) == len(raw) > 25
    assert not [e for _, e in queries if "$" in e]  # Grafana's variables are all filled in
    assert check.metric_names(
        'histogram_quantile(0.95, sum by (le, queue) (rate(sidekiq_job_latency_seconds_bucket{queue=~".*"}[1m])))'
    ) == {"sidekiq_job_latency_seconds_bucket"}
    assert check.metric_names("time() - fastworker_heartbeat_timestamp_seconds") == {
        "fastworker_heartbeat_timestamp_seconds"}
    assert check.metric_names('sum(rate(a_sum{x="b c"}[5m])) / sum(rate(a_count[5m]))') == {"a_sum", "a_count"}
