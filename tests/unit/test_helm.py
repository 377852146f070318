"""The Helm chart (deploy/helm/imagerec): lint, render, Kubernetes schemas, and what it wires.

Helm is the binary scripts/install.sh builds into ``$IMAGEREC_HOME/bin/helm`` from the Go module
proxy; the schemas are those bundled by the pinned ``kubernetes-validate`` for one named
Kubernetes version, so the check runs offline. The rest renders the chart and checks the
properties a release depends on: each worker pod's Faust identity (run through the real
``app.faust_app``), its data volume, the Kafka list, no credential as a literal value, the
gateway config against the local stack's own rendering of the same template, and the refusal
of more workers than partitions.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from app.settings import Settings, get_settings
from app.stack import iam
from app.stack import services as svc
from app.stack.layout import Layout

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "deploy" / "helm" / "imagerec"
CLUSTER_VALUES = CHART / "ci" / "cluster-values.yaml"
KUBE_VERSION = "1.30.0"  # the oldest Kubernetes the chart supports (Chart.yaml kubeVersion)
NEWEST_KUBE_VERSION = "1.37.0"  # the newest whose schemas kubernetes-validate 1.37.0 bundles
NAMESPACE = "imagerec-test"
RELEASE = "rec"
# Custom resources: no Kubernetes schema to check them against.
CRD_KINDS = {"ScaledObject"}
CREDENTIAL = re.compile(r"(KEY|SECRET|PEPPER|PASSWORD)")


def helm_bin() -> Path:
    path = Layout.from_settings(get_settings()).bin / "helm"
    if not os.access(path, os.X_OK):
        pytest.fail(f"helm is not installed at {path}: run `make install` (scripts/install.sh "
                    "builds it from the Go module proxy)")
    return path


def helm(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(helm_bin()), *args], capture_output=True, text=True,
                          timeout=120, check=False)


def template(*args: str) -> subprocess.CompletedProcess[str]:
    """``helm template`` of the chart. The Kubernetes version is named: a Helm built with
    ``go install`` (no release ldflags) otherwise assumes 1.20."""
    return helm("template", RELEASE, str(CHART), "--namespace", NAMESPACE,
                "--kube-version", KUBE_VERSION, *args)


def render(*args: str) -> list[dict[str, Any]]:
    """``helm template`` of the chart; each manifest as a dict."""
    proc = template(*args)
    assert proc.returncode == 0, proc.stderr
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def one(docs: list[dict[str, Any]], kind: str, name_part: str = "") -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and name_part in d["metadata"]["name"]]
    assert len(found) == 1, f"{kind} {name_part!r}: {[d['metadata']['name'] for d in found]}"
    return found[0]


def containers(doc: dict[str, Any]) -> list[dict[str, Any]]:
    spec = doc["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def env_map(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


@pytest.fixture(scope="module")
def default_docs() -> list[dict[str, Any]]:
    return render()


@pytest.fixture(scope="module")
def cluster_docs() -> list[dict[str, Any]]:
    return render("-f", str(CLUSTER_VALUES))


# --- helm itself ---------------------------------------------------------------------------

@pytest.mark.parametrize("values", [[], ["-f", str(CLUSTER_VALUES)]], ids=["default", "cluster"])
def test_helm_lint_passes(values: list[str]) -> None:
    proc = helm("lint", "--strict", str(CHART), "--namespace", NAMESPACE,
                "--kube-version", KUBE_VERSION, *values)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


# --- schemas ----------------------------------------------------------------------------------

def _validate_all(docs: list[dict[str, Any]]) -> list[str]:
    checked = []
    for doc in docs:
        if doc["kind"] in CRD_KINDS:
            continue
        # strict: a field the schema does not know (a typo, a wrong level) is an error too
        for version in (KUBE_VERSION, NEWEST_KUBE_VERSION):
            kubernetes_validate.validate(doc, version, strict=True)
        checked.append(doc["kind"])
    return checked


def test_default_release_validates_against_kubernetes_schemas(default_docs) -> None:
    kinds = _validate_all(default_docs)
    assert sorted(kinds) == sorted([
        "ServiceAccount", "ConfigMap", "StatefulSet", "Service", "Service",  # workers
        "Deployment", "Service",  # gateway
        "Deployment", "Service", "Deployment", "Service",  # the two functions
        "PodDisruptionBudget", "Job"])


def test_cluster_release_validates_against_kubernetes_schemas(cluster_docs) -> None:
    kinds = _validate_all(cluster_docs)
    assert "HorizontalPodAutoscaler" in kinds and "StatefulSet" in kinds


def test_keda_release_validates_and_caps_at_partitions() -> None:
    docs = render("-f", str(CLUSTER_VALUES), "--set", "autoscaling.provider=keda")
    _validate_all(docs)
    scaled = one(docs, "ScaledObject")
    trigger = scaled["spec"]["triggers"][0]
    assert trigger["type"] == "kafka"
    assert trigger["metadata"]["allowIdleConsumers"] == "false"
    assert trigger["metadata"]["topic"] == Settings().topic_uploads
    assert trigger["metadata"]["consumerGroup"] == "imagerec"
    assert scaled["spec"]["scaleTargetRef"]["name"] == one(docs, "StatefulSet")["metadata"]["name"]
    assert not [d for d in docs if d["kind"] == "HorizontalPodAutoscaler"]


def test_schema_check_can_fail() -> None:
    """The validator really rejects a wrong manifest (here: replicas as a string)."""
    bad = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "x"},
           "spec": {"replicas": "two", "selector": {"matchLabels": {"a": "b"}},
                    "template": {"metadata": {"labels": {"a": "b"}},
                                 "spec": {"containers": [{"name": "c", "image": "i"}]}}}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(bad, KUBE_VERSION, strict=True)


# --- workers ----------------------------------------------------------------------------------

def _worker(docs: list[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    sts = one(docs, "StatefulSet")
    worker = next(c for c in sts["spec"]["template"]["spec"]["containers"]
                  if c["name"] == "worker")
    return sts, worker


def test_statefulset_claims_a_volume_for_the_faust_data_dir(default_docs) -> None:
    sts, worker = _worker(default_docs)
    claims = {c["metadata"]["name"]: c for c in sts["spec"]["volumeClaimTemplates"]}
    mounts = {m["name"]: m["mountPath"] for m in worker["volumeMounts"]}
    home = env_map(worker)["IMAGEREC_HOME"]["value"]
    assert "data" in claims and mounts["data"] == home
    # Every worker id's RocksDB directory lies on that claim, not on the container's disk.
    for worker_id in (1, 2, 7):
        datadir = Layout(home=Path(home)).worker_data(worker_id)
        assert Path(mounts["data"]) in datadir.parents
    # The claim is not also a pod volume (which would make it shared, not per pod).
    assert "data" not in {v["name"] for v in sts["spec"]["template"]["spec"]["volumes"]}


def test_headless_service_governs_the_statefulset(default_docs) -> None:
    sts, _ = _worker(default_docs)
    headless = one(default_docs, "Service", "worker-headless")
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert headless["spec"]["clusterIP"] == "None"
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert headless["spec"]["selector"].items() <= labels.items()


def _pod_env(container: dict[str, Any], pod: str) -> dict[str, str]:
    """The container's literal environment as the kubelet builds it: fieldRefs resolved,
    $(VAR) references expanded from earlier entries; Secret references left out."""
    fields = {"metadata.name": pod, "metadata.namespace": NAMESPACE}
    out: dict[str, str] = {}
    for entry in container["env"]:
        if "value" in entry:
            out[entry["name"]] = re.sub(r"\$\((\w+)\)", lambda m: out.get(m[1], m[0]),
                                        entry["value"])
        elif "fieldRef" in entry.get("valueFrom", {}):
            out[entry["name"]] = fields[entry["valueFrom"]["fieldRef"]["fieldPath"]]
    return out


PROBE = """
import json
from app.faust_app import WORKER_ID, app
print(json.dumps({"id": WORKER_ID, "port": app.conf.web_port, "host": app.conf.web_host,
                  "url": str(app.conf.canonical_url), "datadir": str(app.conf.datadir)}))
"""


@pytest.mark.parametrize("ordinal", [0, 2])
def test_worker_pod_gets_its_faust_identity_from_the_ordinal(default_docs, tmp_path,
                                                              ordinal: int) -> None:
    """Run the worker container's own start script with the environment Kubernetes would give
    pod N, and let the real app.faust_app say which port it serves, which URL it advertises
    to its peers (table routing) and where its RocksDB goes."""
    import json

    sts, worker = _worker(default_docs)
    pod = f"{sts['metadata']['name']}-{ordinal}"
    assert worker["command"][:2] == ["/bin/sh", "-c"]
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    python = fake_bin / "python"
    python.write_text('#!/bin/sh\n[ "$*" = "-m app.worker" ] || exit 99\n'
                      f'exec {sys.executable} -c "$PROBE"\n')
    python.chmod(0o755)
    env = {**_pod_env(worker, pod), "PATH": f"{fake_bin}:/usr/bin:/bin", "PROBE": PROBE,
           "PYTHONPATH": str(REPO)}
    proc = subprocess.run(["/bin/sh", "-c", worker["args"][0]], env=env, capture_output=True,
                          text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    seen = json.loads(proc.stdout.strip().splitlines()[-1])
    port = worker["ports"][0]["containerPort"]
    headless = one(default_docs, "Service", "worker-headless")["metadata"]["name"]
    assert seen["id"] == ordinal + 1
    assert seen["port"] == port  # the same containerPort in every pod
    assert seen["host"] == "0.0.0.0"
    assert seen["url"] == f"http://{pod}.{headless}.{NAMESPACE}.svc.cluster.local:{port}"
    assert seen["datadir"].startswith("/data/")
    assert seen["datadir"].endswith(f"faust-{ordinal + 1}")


def test_worker_env_names_every_kafka_broker_and_sentinel(cluster_docs) -> None:
    values = yaml.safe_load(CLUSTER_VALUES.read_text())
    _, worker = _worker(cluster_docs)
    env = env_map(worker)
    brokers = env["IMAGEREC_KAFKA_BOOTSTRAP"]["value"].split(",")
    assert brokers == values["kafka"]["bootstrapServers"] and len(brokers) == 3
    assert env["IMAGEREC_REDIS_SENTINELS"]["value"].split(",") == values["redis"]["sentinels"]
    assert env["IMAGEREC_REDIS_SENTINEL_MASTER"]["value"] == values["redis"]["sentinelMaster"]
    assert env["IMAGEREC_TOPIC_REPLICATION"]["value"] == "3"
    assert env["IMAGEREC_TOPIC_MIN_ISR"]["value"] == "2"
    assert env["IMAGEREC_TOPIC_PARTITIONS"]["value"] == "6"
    assert env["IMAGEREC_RECONCILE_GRACE_S"]["value"] == "300"  # config.extraEnv
    # The rendered values are ones the application accepts.
    settings = Settings(**{k.removeprefix("IMAGEREC_").lower(): e["value"]
                           for k, e in env.items()
                           if k.startswith("IMAGEREC_") and "value" in e})
    assert settings.kafka_bootstrap == ",".join(brokers)
    assert settings.topic_partitions == 6


def test_no_credential_is_rendered_as_a_value(default_docs, cluster_docs) -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    secret_names = {n for n in values["secrets"].values() if n} | {"imagerec-redis-url"}
    for docs in (default_docs, cluster_docs):
        assert not [d for d in docs if d["kind"] == "Secret"]
        refs = 0
        for doc in docs:
            if "template" not in doc.get("spec", {}):
                continue
            for container in containers(doc):
                for entry in container.get("env", []):
                    ref = entry.get("valueFrom", {}).get("secretKeyRef")
                    if CREDENTIAL.search(entry["name"]):
                        assert ref is not None, f"{doc['metadata']['name']}: {entry['name']}"
                    if ref:
                        refs += 1
                        assert ref["name"] in secret_names and "value" not in entry
                assert not container.get("envFrom"), "a whole Secret would hide what is used"
        assert refs > 10
    # With secrets.redisUrl the Redis URL (which may carry a password) is a reference too.
    _, worker = _worker(cluster_docs)
    assert "secretKeyRef" in env_map(worker)["IMAGEREC_REDIS_URL"]["valueFrom"]


def test_each_process_gets_only_its_own_s3_key(default_docs) -> None:
    expected = {"worker": "WORKER", "image-upload": "UPLOADER",
                "image-classifier": "CLASSIFIER"}
    for part, component in expected.items():
        doc = one(default_docs, "StatefulSet" if part == "worker" else "Deployment", part)
        main = doc["spec"]["template"]["spec"]["containers"][0]
        env = env_map(main)
        access = env["IMAGEREC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
        secret = env["IMAGEREC_S3_SECRET_KEY"]["valueFrom"]["secretKeyRef"]
        assert (access["key"], secret["key"]) == iam.key_env_names(component.lower())


def test_workers_above_partitions_are_refused() -> None:
    proc = template("--set", "workers.replicas=5", "--set", "kafka.topicPartitions=4")
    assert proc.returncode != 0
    assert "workers.replicas (5) exceeds kafka.topicPartitions (4)" in proc.stderr
    proc = template("-f", str(CLUSTER_VALUES), "--set", "autoscaling.maxReplicas=7")
    assert proc.returncode != 0
    assert "autoscaling.maxReplicas (7) exceeds kafka.topicPartitions (6)" in proc.stderr
    # At the limit it renders.
    render("--set", "workers.replicas=4", "--set", "kafka.topicPartitions=4")


def test_a_credential_in_extra_env_is_refused() -> None:
    proc = template("--set", "config.extraEnv.IMAGEREC_S3_SECRET_KEY=plain")
    assert proc.returncode != 0 and "put it in a Secret" in proc.stderr


def test_autoscaler_targets_the_workers_and_owns_their_count(cluster_docs, default_docs) -> None:
    sts, _ = _worker(cluster_docs)
    hpa = one(cluster_docs, "HorizontalPodAutoscaler")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "StatefulSet",
                                             "name": sts["metadata"]["name"]}
    assert hpa["spec"]["maxReplicas"] <= 6  # cluster-values' partitions
    metric = hpa["spec"]["metrics"][0]["external"]
    assert metric["metric"]["selector"]["matchLabels"]["topic"] == Settings().topic_uploads
    assert metric["target"]["type"] == "AverageValue"
    # With an autoscaler, helm upgrade must not reset the worker count it chose.
    assert "replicas" not in sts["spec"]
    assert _worker(default_docs)[0]["spec"]["replicas"] == 2
    assert not [d for d in default_docs if d["kind"] == "HorizontalPodAutoscaler"]


def test_disruption_budget_selects_the_workers(default_docs) -> None:
    sts, _ = _worker(default_docs)
    pdb = one(default_docs, "PodDisruptionBudget")
    assert pdb["spec"]["maxUnavailable"] == 1
    assert pdb["spec"]["selector"]["matchLabels"].items() <= \
        sts["spec"]["template"]["metadata"]["labels"].items()


def test_probes_and_security_context(default_docs) -> None:
    _, worker = _worker(default_docs)
    assert worker["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert worker["readinessProbe"]["httpGet"]["path"] == "/readyz"
    for doc in default_docs:
        if "template" not in doc.get("spec", {}):
            continue
        pod = doc["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["automountServiceAccountToken"] is False
        for container in containers(doc):
            ctx = container["securityContext"]
            assert ctx["readOnlyRootFilesystem"] is True
            assert ctx["allowPrivilegeEscalation"] is False
            assert container["resources"]["requests"]
            # A read-only root needs a writable /tmp wherever Python or Nginx runs.
            if container["name"] != "seed-models":
                assert "/tmp" in {m["mountPath"] for m in container["volumeMounts"]}


# --- the provisioning job -------------------------------------------------------------------

def test_provision_job_is_a_pre_install_hook_running_stack_init(default_docs) -> None:
    from app.cli.stack import stack

    job = one(default_docs, "Job")
    assert "pre-install" in job["metadata"]["annotations"]["helm.sh/hook"]
    main = job["spec"]["template"]["spec"]["containers"][0]
    assert main["command"] == ["imagerec", "stack", "init"]
    assert "init" in stack.commands
    env = env_map(main)
    # ensure_iam creates a user for every component, so the job needs every component's key.
    for component in iam.COMPONENTS:
        for name in iam.key_env_names(component):
            assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "imagerec-s3-components"
    assert env["IMAGEREC_S3_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == \
        "imagerec-s3-admin"


def test_provision_job_for_any_s3_runs_real_provision_functions() -> None:
    docs = render("--set", "provision.minioAdmin=false")
    main = one(docs, "Job")["spec"]["template"]["spec"]["containers"][0]
    assert main["command"][:2] == ["python", "-c"]
    code = main["command"][2]
    compile(code, "<provision job>", "exec")
    from app.stack import provision

    for name in re.findall(r"from app\.stack\.provision import (.+)", code)[0].split(","):
        assert callable(getattr(provision, name.strip()))
    assert not [n for n in env_map(main) if n.startswith("IMAGEREC_S3_WORKER")]


# --- the gateway ----------------------------------------------------------------------------

def _chart_nginx(docs: list[dict[str, Any]]) -> str:
    return one(docs, "ConfigMap", "gateway")["data"]["nginx.conf"]


def test_gateway_config_is_the_local_template_with_cluster_names(cluster_docs, tmp_path) -> None:
    """The chart fills deploy/nginx.conf.tmpl as app.stack.services.render_nginx does: the
    same text for the same settings, apart from names and paths."""
    chart = _chart_nginx(cluster_docs)
    worker = f"rec-imagerec-worker.{NAMESPACE}.svc.cluster.local:6066"
    fns = [f"rec-imagerec-{f}.{NAMESPACE}.svc.cluster.local:8080" for f in svc.FUNCTIONS]
    # topology "single": the chart's upstream is one Service, never rested (max_fails=0), as
    # the single stack's workers are; a cluster stack lists each worker with health checks.
    settings = Settings(home=tmp_path, topology="single", gateway_workers=worker,
                        gateway_functions=",".join(fns),
                        s3_endpoint="minio.minio.svc:443", s3_secure=True,  # ci values
                        gateway_bind="0.0.0.0", gateway_url="http://127.0.0.1:8080",
                        max_upload_bytes=10485760, rate_limit_rps=0.5, rate_limit_burst=20)
    layout = Layout(home=tmp_path)
    local = svc.render_nginx(layout, settings, REPO / "deploy" / "nginx.conf.tmpl").read_text()
    conf_dir = layout.run / "nginx"
    for path, there in ((conf_dir / "nginx.pid", "/tmp/nginx.pid"), (conf_dir / "tmp", "/tmp"),
                        (REPO / "web" / "static", "/srv/imagerec/web/static"),
                        (REPO / "deploy", "/etc/imagerec/nginx")):
        local = local.replace(str(path), there)

    def comparable(text: str) -> list[str]:  # the user line and TLS differ by design
        return ["" if line == "user root;" else line for line in text.splitlines()
                if "# TLS:" not in line]

    assert comparable(chart) == comparable(local)
    assert "limit_req_zone $limit_key zone=per_key:10m rate=30r/m;" in chart  # 0.5/s
    assert f"client_max_body_size {10485760 + 65536};" in chart
    assert f"server {worker} max_fails=0;" in chart


def test_gateway_config_passes_nginx_t(default_docs, tmp_path) -> None:
    """The rendered config is one Nginx accepts (names resolved to loopback, paths moved into
    a scratch dir, as a pod would see them under its mounts)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.access(nginx, os.X_OK):
        pytest.fail("nginx is not installed: run `make install`")
    docs = default_docs
    cm = one(docs, "ConfigMap", "gateway")["data"]
    conf = cm["nginx.conf"]
    conf = re.sub(r"[a-z0-9-]+\.imagerec-test\.svc\.cluster\.local", "127.0.0.1", conf)
    conf = conf.replace("minio.minio.svc", "127.0.0.1")  # the S3 of values.yaml
    conf = conf.replace(" /tmp/", f" {tmp_path}/").replace("/etc/imagerec/nginx", str(tmp_path))
    with socket.socket() as sock:  # nginx -t binds its listen address: take a free one
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    conf, n = re.subn(r"listen 0\.0\.0\.0:8080;", f"listen 127.0.0.1:{port};", conf)
    assert n == 1
    (tmp_path / "nginx-security-headers.conf").write_text(cm["nginx-security-headers.conf"])
    (tmp_path / "nginx.conf").write_text(conf)
    proc = subprocess.run([nginx, "-t", "-e", "stderr", "-c", str(tmp_path / "nginx.conf")],
                          capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "syntax is ok" in proc.stderr


def test_gateway_rolls_when_its_config_changes() -> None:
    def checksum(*args: str) -> str:
        deploy = one(render(*args), "Deployment", "gateway")
        return deploy["spec"]["template"]["metadata"]["annotations"]["checksum/config"]

    assert checksum() != checksum("--set", "config.rateLimitRps=50")


@pytest.mark.parametrize(("args", "threads"), [
    ((), "1"),
    (("--set", "workers.resources.requests.cpu=2500m"), "2"),
    (("--set", "workers.resources.requests.cpu=3"), "3"),
    (("--set", "workers.inferenceThreads=5"), "5"),
])
def test_worker_inference_threads_follow_the_cpu_request(args: tuple[str, ...],
                                                         threads: str) -> None:
    """Not the node's core count, which is what a container's os.cpu_count() reports."""
    _, worker = _worker(render(*args))
    assert env_map(worker)["IMAGEREC_INFERENCE_THREADS"]["value"] == threads
