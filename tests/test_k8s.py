"""deploy/k8s: the manifests parse, hang together (selectors, services, secrets, the shared socket)
and keep the promises the README makes (no job lost on a rolling restart, no network port for the
sidecar, non-root). No cluster runs here: these are the checks `kubectl apply --dry-run` cannot make."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
K8S = ROOT / "deploy/k8s"
DOCS = {f.name: list(yaml.safe_load_all(f.read_text())) for f in sorted(K8S.glob("*.yaml"))}
OBJECTS = [d for name, docs in DOCS.items() if name != "kustomization.yaml" for d in docs]
WORKLOADS = [d for d in OBJECTS if d["kind"] in ("Deployment", "StatefulSet")]
WORKER = next(d for d in WORKLOADS if d["metadata"]["name"] == "fastworker-worker")
POD = WORKER["spec"]["template"]["spec"]
SIDECAR = next(c for c in POD["initContainers"] if c["name"] == "sidecar")
WORKER_C = next(c for c in POD["containers"] if c["name"] == "worker")


def _env(container):
    return {e["name"]: e for e in container.get("env", [])}


def test_kustomization_lists_every_manifest():
    kust = DOCS["kustomization.yaml"][0]
    assert sorted(kust["resources"]) == sorted(n for n in DOCS if n != "kustomization.yaml")


def test_every_object_is_well_formed():
    for d in OBJECTS:
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], d


@pytest.mark.parametrize("wl", WORKLOADS, ids=lambda d: d["metadata"]["name"])
def test_workloads_select_their_pods_run_non_root_with_probes(wl):
    labels = wl["spec"]["template"]["metadata"]["labels"]
    assert wl["spec"]["selector"]["matchLabels"].items() <= labels.items()
    pod = wl["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    long_running = pod["containers"] + [c for c in pod.get("initContainers", []) if c.get("restartPolicy") == "Always"]
    for c in long_running:
        assert c.get("livenessProbe"), c["name"]
        assert c.get("readinessProbe") or c.get("startupProbe"), c["name"]
        assert c["resources"]["limits"]["memory"], c["name"]


def test_every_service_selects_a_pod_and_every_host_has_a_service():
    pods = [wl["spec"]["template"]["metadata"]["labels"] for wl in WORKLOADS]
    services = {d["metadata"]["name"] for d in OBJECTS if d["kind"] == "Service"}
    for svc in (d for d in OBJECTS if d["kind"] == "Service"):
        assert any(svc["spec"]["selector"].items() <= p.items() for p in pods), svc["metadata"]["name"]
    assert {"redis", "postgres", "app"} <= services
    secret = next(d for d in OBJECTS if d["kind"] == "Secret")
    assert "@postgres:5432/" in secret["stringData"]["url"]
    assert _env(WORKER_C)["REDIS_URL"]["value"].startswith("redis://redis:6379")


def test_images_are_the_ones_compose_builds():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    built = {svc["image"] for svc in compose.values() if "image" in svc}
    for wl in WORKLOADS:
        pod = wl["spec"]["template"]["spec"]
        for c in pod["containers"] + pod.get("initContainers", []):
            assert c["image"] in built, c["image"]


def test_worker_and_sidecar_share_a_unix_socket_and_no_port():
    assert SIDECAR["restartPolicy"] == "Always", "a native sidecar: up before the worker, stopped after it"
    assert "ports" not in SIDECAR
    cmd = SIDECAR["command"]
    socket = cmd[cmd.index("--socket") + 1]
    assert "--port" not in cmd and "--bind" not in cmd
    assert _env(WORKER_C)["FASTWORKER_SIDECAR_URL"]["value"] == "unix://" + socket
    mounts = lambda c: {m["name"]: m["mountPath"] for m in c["volumeMounts"]}  # noqa: E731
    shared = mounts(SIDECAR)["socket"]
    assert mounts(WORKER_C)["socket"] == shared and socket.startswith(shared + "/")
    assert {"name": "socket", "emptyDir": {}} in POD["volumes"]
    assert socket in " ".join(SIDECAR["startupProbe"]["exec"]["command"])


def test_both_containers_read_the_secret_from_the_same_file():
    vol = next(v for v in POD["volumes"] if v["name"] == "secret")
    for c in (SIDECAR, WORKER_C):
        path = _env(c)["FASTWORKER_SIDECAR_SECRET_FILE"]["value"]
        mount = next(m for m in c["volumeMounts"] if m["name"] == "secret")
        assert path == mount["mountPath"] + "/" + vol["secret"]["items"][0]["path"]
        assert "FASTWORKER_SIDECAR_SECRET" not in _env(c), "never the value itself"


def test_a_rolling_restart_drains_every_pod():
    from fastworker.config import load_config
    env = {k: v["value"] for k, v in _env(WORKER_C).items() if "value" in v}
    cfg = load_config(list(WORKER_C["args"]), env)
    assert cfg.sidecar_url.startswith("unix://")
    # the pod is killed only after the worker's drain (--timeout) and its hard-shutdown margin
    assert POD["terminationGracePeriodSeconds"] > cfg.timeout + 4
    rolling = WORKER["spec"]["strategy"]["rollingUpdate"]
    assert rolling["maxUnavailable"] == 0 and rolling["maxSurge"] >= 1
