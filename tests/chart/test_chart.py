"""The Helm chart, rendered by the real `helm template`: one source of truth for the CRD and the operator's RBAC
(manifests/), restricted pods everywhere, no literal secrets, monitoring only when asked for, a schema that
refuses wrong values, and a Containerfile whose targets run the documented entry points as a numeric non-root user."""

from __future__ import annotations

import json
import re

import pytest
import yaml
from qw_core.settings import OperatorSettings

import manifests
from tests.conftest import _need
from tests.support.chart import (
    CHART,
    CI_VALUES,
    LINTABLE_CI_VALUES,
    MANIFESTS,
    MINIMAL,
    ROOT,
    helm,
    helm_binary,
    operator_rules,
    pod_specs,
    render,
    rule_triples,
    template_args,
)


@pytest.fixture(scope="module", autouse=True)
def _helm_present() -> None:
    if helm_binary() is None:
        _need("helm", FileNotFoundError("helm not built: make cluster-bin"))


@pytest.fixture(scope="module")
def scenarios() -> dict[str, list[dict]]:
    return {v.name: render(v) for v in CI_VALUES}


def _manifest_docs(name: str) -> list[dict]:
    path = MANIFESTS / name
    assert path.exists(), f"manifests/{name} is missing"
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


# --- one source of truth -------------------------------------------------------------------------------------


def test_the_charts_crd_is_a_byte_for_byte_copy_of_manifests_crd() -> None:
    _manifest_docs("crd.yaml")
    copies = sorted((CHART / "crds").glob("*.yaml"))
    assert [c.name for c in copies] == ["queueworker.yaml"], "copy it: cp manifests/crd.yaml charts/queueworker/crds/"
    assert copies[0].read_bytes() == (MANIFESTS / "crd.yaml").read_bytes(), (
        "charts/queueworker/crds/queueworker.yaml differs from manifests/crd.yaml (the source of truth): "
        "cp manifests/crd.yaml charts/queueworker/crds/queueworker.yaml"
    )


def test_the_operators_rbac_rules_equal_those_of_manifests_rbac() -> None:
    manifest_roles = [d for d in _manifest_docs("rbac.yaml") if d["kind"] in ("Role", "ClusterRole")]
    chart = operator_rules(render(MINIMAL))
    assert chart == rule_triples([r for role in manifest_roles for r in role.get("rules", [])])


def test_the_queueworkers_use_the_crds_group_version_and_known_spec_fields() -> None:
    crds = [d for d in _manifest_docs("crd.yaml") if d.get("kind") == "CustomResourceDefinition"]
    crd = next(c for c in crds if c["spec"]["names"]["kind"] == "QueueWorker")
    served = {f"{crd['spec']['group']}/{v['name']}": v for v in crd["spec"]["versions"] if v.get("served")}
    workers = [o for o in render(MINIMAL) if o["kind"] == "QueueWorker"]
    assert len(workers) == 2
    for qw in workers:
        assert qw["apiVersion"] in served, f"{qw['apiVersion']} is not served; the CRD serves {sorted(served)}"
        spec_schema = served[qw["apiVersion"]]["schema"]["openAPIV3Schema"]["properties"]["spec"]
        unknown = set(qw["spec"]) - set(spec_schema.get("properties", {}))
        assert not unknown, f"spec fields the CRD does not define: {unknown}"
        assert set(spec_schema.get("required", [])) <= set(qw["spec"])


def test_the_dashboards_are_generated_from_build_py() -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("dashboards_build", CHART / "dashboards" / "build.py")
    assert spec and spec.loader
    build = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(build)
    for name in ("api", "workers", "operator"):
        on_disk = json.loads((CHART / "dashboards" / f"{name}.json").read_text())
        assert on_disk == getattr(build, name)(), f"dashboards/{name}.json is stale: run dashboards/build.py"


# --- what every scenario renders ------------------------------------------------------------------------------


def test_every_ci_scenario_passes_helm_lint_strict() -> None:
    assert len(LINTABLE_CI_VALUES) >= len(CI_VALUES) - 1, "only the Cluster Operator scenario cannot be linted"
    for values in LINTABLE_CI_VALUES:
        out = helm("lint", "--strict", str(CHART), "-f", str(values), check=False)
        assert out.returncode == 0, f"{values.name}:\n{out.stdout}{out.stderr}"


def test_every_pod_meets_the_restricted_pod_security_standard(scenarios) -> None:
    seen = 0
    for scenario, objects in scenarios.items():
        for name, pod in pod_specs(objects):
            seen += 1
            where = f"{scenario}: {name}"
            psc = pod["securityContext"]
            assert psc["runAsNonRoot"] is True and psc["runAsUser"] > 0, where
            assert psc["seccompProfile"]["type"] == "RuntimeDefault", where
            volumes = {v["name"]: v for v in pod.get("volumes", [])}
            assert not any("hostPath" in v for v in volumes.values()), where
            assert "emptyDir" in volumes["tmp"], where
            for c in pod["containers"]:
                sc = c["securityContext"]
                assert sc["allowPrivilegeEscalation"] is False, where
                assert sc["capabilities"]["drop"] == ["ALL"] and "add" not in sc["capabilities"], where
                assert sc["readOnlyRootFilesystem"] is True, where
                assert {"mountPath": "/tmp", "name": "tmp"} in c["volumeMounts"], where
                assert c["resources"]["requests"] and c["resources"]["limits"]["memory"], where
                assert not c.get("ports") or all("hostPort" not in p for p in c["ports"]), where
    assert seen >= 3 * len(scenarios) - 2


def _secret_free(literal: str, from_secrets: set[str]) -> bool:
    """A mounted file (@/path), a URL without credentials, or one whose user and password are only $(VAR)
    references the kubelet fills in from Secret keys defined above it."""
    if literal.startswith("@/"):
        return True
    m = re.match(r"^[a-z][a-z0-9+.-]*://(?:([^@/]*)@)?", literal)
    if m is None:
        return False
    if m.group(1) is None:
        return "pass" not in literal.lower()  # no ?password= either
    refs = re.fullmatch(r"\$\((\w+)\):\$\((\w+)\)", m.group(1))
    return refs is not None and set(refs.groups()) <= from_secrets


def test_no_secret_is_rendered_literally_and_nothing_says_guest(scenarios) -> None:
    secretish = re.compile(r"URL|PASSWORD|USERNAME|KEYS|TOKEN", re.I)
    for scenario, objects in scenarios.items():
        assert "guest" not in yaml.safe_dump_all(objects), scenario
        for name, pod in pod_specs(objects):
            for c in pod["containers"]:
                from_secrets: set[str] = set()
                for env in c.get("env", []):
                    if "secretKeyRef" in env.get("valueFrom", {}):
                        from_secrets.add(env["name"])
                    elif "valueFrom" not in env and secretish.search(env["name"]) and env["name"] != "QW_PUBLIC_URL":
                        assert _secret_free(env.get("value", ""), from_secrets), f"{scenario} {name}: {env}"
    assert not any(o["kind"] == "Secret" for objs in scenarios.values() for o in objs), "the chart creates no Secret"


def test_the_secret_check_knows_a_literal_credential_from_a_reference() -> None:
    refs = {"RABBITMQ_USERNAME", "RABBITMQ_PASSWORD"}
    assert _secret_free("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@$(RABBITMQ_HOST):5672/%2F", refs)
    assert _secret_free("http://rabbitmq-nodes.qw.svc:15692", refs)
    assert not _secret_free("amqp://qw:hunter2@rabbitmq:5672/", refs)
    assert not _secret_free("amqp://$(RABBITMQ_USERNAME):hunter2@rabbitmq:5672/", refs)
    assert not _secret_free("amqp://$(RABBITMQ_USERNAME):$(RABBITMQ_PASSWORD)@h/", {"RABBITMQ_USERNAME"})
    assert not _secret_free("hunter2", refs)


def test_the_operator_is_one_replica_recreated_never_two() -> None:
    [operator] = [
        o for o in render(MINIMAL) if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("operator")
    ]
    assert operator["spec"]["replicas"] == 1
    assert operator["spec"]["strategy"] == {"type": "Recreate"}
    pod = operator["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "qw-queueworker-operator"
    assert pod["containers"][0]["args"] == ["--namespace", "qw", "--peering", "qw-queueworker"]
    env = {e["name"]: e for e in pod["containers"][0]["env"]}
    assert env["POD_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}  # kopf's peer identity
    [peering] = [o for o in render(MINIMAL) if o["kind"] == "KopfPeering"]
    assert peering["metadata"]["name"] == "qw-queueworker"  # a second operator waits instead of acting


PACING = ("QW_STATUS_MIN_INTERVAL_SECONDS", "QW_KUBE_QPS", "QW_KUBE_BURST", "QW_KUBE_WRITERS", "QW_KUBE_WRITE_TIMEOUT")


def _operator_env(objects: list[dict]) -> dict[str, str]:
    [operator] = [o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"].endswith("operator")]
    return {e["name"]: e.get("value") for e in operator["spec"]["template"]["spec"]["containers"][0]["env"]}


def test_the_operators_write_pacing_is_set_from_values(monkeypatch: pytest.MonkeyPatch) -> None:
    """operator.kube.{qps,burst,writers,writeTimeout} and operator.statusMinIntervalSeconds reach the operator as
    the settings it reads; the defaults are the operator's own, and the plain manifests say the same."""
    defaults = OperatorSettings.model_fields
    env = _operator_env(render(MINIMAL))
    assert {k: float(env[k]) for k in PACING} == {
        "QW_STATUS_MIN_INTERVAL_SECONDS": defaults["status_min_interval_seconds"].default,
        "QW_KUBE_QPS": defaults["kube_qps"].default,
        "QW_KUBE_BURST": defaults["kube_burst"].default,
        "QW_KUBE_WRITERS": defaults["kube_writers"].default,
        "QW_KUBE_WRITE_TIMEOUT": defaults["kube_write_timeout"].default,
    }
    [manifest] = [d for d in _manifest_docs("operator.yaml") if d["kind"] == "Deployment"]
    manifest_env = {e["name"]: e.get("value") for e in manifest["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert {k: manifest_env.get(k) for k in PACING} == {k: env[k] for k in PACING}
    sets = ("operator.kube.qps=40", "operator.kube.burst=60", "operator.kube.writers=4",
            "operator.kube.writeTimeout=7", "operator.statusMinIntervalSeconds=30")  # fmt: skip
    env = _operator_env(render(MINIMAL, sets=sets))
    for k in PACING:
        monkeypatch.setenv(k, env[k])
    s = OperatorSettings()
    assert (s.kube_qps, s.kube_burst, s.kube_writers, s.kube_write_timeout, s.status_min_interval_seconds) == (
        40,
        60,
        4,
        7,
        30,
    )


def test_the_operator_rbac_is_minimal() -> None:
    rules = operator_rules(render(MINIMAL))
    assert not {t for t in rules if "*" in t}, "no wildcards"
    assert not {t for t in rules if t[1] in ("secrets", "configmaps", "pods/exec", "roles", "rolebindings")}
    writes = {(g, r) for g, r, v in rules if v in ("create", "update", "patch", "delete", "deletecollection")}
    assert writes <= {("apps", "deployments"), ("", "events"), ("queueworker.dev", "queueworkers"),
                      ("queueworker.dev", "queueworkers/status"), ("kopf.dev", "kopfpeerings")}  # fmt: skip
    cluster_scoped = [o["kind"] for o in render(MINIMAL) if o["kind"] in ("ClusterRole", "ClusterRoleBinding")]
    assert cluster_scoped == [], "the operator watches its release namespace only: no cluster-wide grant"


def test_monitoring_objects_render_only_when_enabled(scenarios) -> None:
    def monitoring_kinds(objects: list[dict]) -> list[str]:
        return sorted(o["kind"] for o in objects if o["apiVersion"].startswith("monitoring.coreos.com/"))

    assert monitoring_kinds(scenarios["minimal-values.yaml"]) == []
    with_monitoring = scenarios["with-ingress-and-monitoring-values.yaml"]
    assert monitoring_kinds(with_monitoring) == ["PodMonitor", "PrometheusRule", "ServiceMonitor", "ServiceMonitor"]
    [rule] = [o for o in with_monitoring if o["kind"] == "PrometheusRule"]
    assert rule["spec"] == yaml.safe_load((CHART / "rules" / "queueworker.rules.yaml").read_text())
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_dashboards_ship_as_configmaps_for_the_grafana_sidecar(scenarios) -> None:
    maps = [o for o in scenarios["minimal-values.yaml"] if o["kind"] == "ConfigMap"]
    assert {m["metadata"]["name"] for m in maps} == {
        f"qw-queueworker-dashboard-{n}" for n in ("api", "operator", "workers")
    }
    for m in maps:
        assert m["metadata"]["labels"]["grafana_dashboard"] == "1"
        [(key, text)] = m["data"].items()
        name = key.removeprefix("queueworker-")
        assert json.loads(text) == json.loads((CHART / "dashboards" / name).read_text())
    relabelled = render(MINIMAL, sets=("monitoring.dashboards.label=dash", "monitoring.dashboards.labelValue=yes"))
    assert all(o["metadata"]["labels"]["dash"] == "yes" for o in relabelled if o["kind"] == "ConfigMap")


def test_the_ingress_and_network_policies_render_when_asked(scenarios) -> None:
    [ingress] = [o for o in scenarios["with-ingress-and-monitoring-values.yaml"] if o["kind"] == "Ingress"]
    assert ingress["spec"]["tls"] == [{"hosts": ["queueworker.example.com"], "secretName": "queueworker-tls"}]
    # Only the task API and the web page are public: /metrics, /readyz, /docs stay inside the cluster.
    paths = [(p["path"], p["pathType"]) for p in ingress["spec"]["rules"][0]["http"]["paths"]]
    assert paths == [("/v1", "Prefix"), ("/", "Exact")]
    policies = {
        o["metadata"]["name"]: o for o in scenarios["networkpolicy-values.yaml"] if o["kind"] == "NetworkPolicy"
    }
    assert set(policies) == {"qw-queueworker-api", "qw-queueworker-operator", "qw-queueworker-worker"}
    assert policies["qw-queueworker-api"]["spec"]["ingress"][0]["ports"] == [{"port": "http"}]
    assert not any(o["kind"] == "NetworkPolicy" for o in scenarios["minimal-values.yaml"])


# --- the schema ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("setting", "complaint"),
    [
        ("api.replicaCount=abc", "/api/replicaCount"),
        ("api.replicaCount=-1", "/api/replicaCount"),
        ("logFormat=xml", "/logFormat"),
        ("workers.kinds.image.maxReplicas=0", "/workers/kinds/image/maxReplicas"),
        ("workers.kinds.email.smtp.port=70000", "/workers/kinds/email/smtp/port"),
        ("podSecurityContext.runAsUser=0", "/podSecurityContext/runAsUser"),
        ("containerSecurityContext.allowPrivilegeEscalation=true", "/containerSecurityContext"),
        ("api.service.type=ExternalName", "/api/service/type"),
        ("api.image.pullPolicy=Sometimes", "/api/image/pullPolicy"),
        ("replicaCount=3", "additional properties 'replicaCount' not allowed"),
        ("workers.kinds.image.env.PATH=/x", "'PATH' does not match pattern '^QW_"),
        ("operator.kube.qps=0", "/operator/kube/qps"),
        ("operator.kube.qps=-10", "/operator/kube/qps"),
        ("operator.kube.qps=fast", "/operator/kube/qps"),
        ("operator.kube.burst=0", "/operator/kube/burst"),
        ("operator.kube.burst=2.5", "/operator/kube/burst"),
        ("operator.kube.writers=0", "/operator/kube/writers"),
        ("operator.kube.writers=100", "/operator/kube/writers"),
        ("operator.kube.writeTimeout=0", "/operator/kube/writeTimeout"),
        ("operator.kube.writeTimeout=3600", "/operator/kube/writeTimeout"),
        ("operator.kube.qsp=10", "additional properties 'qsp' not allowed"),
        ("operator.statusMinIntervalSeconds=0", "/operator/statusMinIntervalSeconds"),
    ],
)
def test_the_schema_rejects_wrong_values_with_a_clear_message(setting: str, complaint: str) -> None:
    out = helm(*template_args(MINIMAL, sets=(setting,)), check=False)
    assert out.returncode != 0, f"{setting} was accepted"
    assert "values don't meet the specifications of the schema" in out.stderr
    assert complaint in out.stderr, out.stderr


def test_required_secrets_are_named_in_the_error() -> None:
    out = helm("template", "qw", str(CHART), check=False)
    assert out.returncode != 0
    assert "rabbitmq.existingSecret is required" in out.stderr or "api.existingSecret is required" in out.stderr


def test_every_value_is_documented() -> None:
    """Each key has a comment right above it, or sits inside a documented block (e.g. resources)."""
    undocumented, stack = [], []  # stack: (indent, documented) of the open mapping keys
    prev = ""
    for line in (CHART / "values.yaml").read_text().splitlines():
        m = re.match(r"^(\s*)([A-Za-z_][\w.-]*):", line)
        if m:
            indent = len(m.group(1))
            while stack and stack[-1][0] >= indent:
                stack.pop()
            documented = prev.lstrip().startswith("#") or any(d for _, d in stack)
            if not documented:
                undocumented.append(line.strip())
            stack.append((indent, documented and prev.lstrip().startswith("#")))
        if line.strip():
            prev = line
    # Headers of groups (image:, service:, ingress:, kinds:) are named by their children's comments.
    leaves = [k for k in undocumented if not k.endswith(":")]
    assert not leaves, f"values without a comment: {leaves}"


# --- the Containerfile ---------------------------------------------------------------------------------------

ENTRY_POINTS = {"api": ["python", "-m", "qw_api"], "workers": ["python", "-m", "qw_workers"],
                "operator": ["python", "-m", "qw_operator"]}  # fmt: skip


def _stages() -> dict[str, list[str]]:
    """Containerfile instructions (continuation lines joined) by stage name."""
    text = (ROOT / "Containerfile").read_text().replace("\\\n", " ")
    stages: dict[str, list[str]] = {"": []}
    current = ""
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        if line.startswith("FROM "):
            current = line.split()[-1] if " AS " in line else f"stage{len(stages)}"
            stages[current] = []
        stages[current].append(line)
    return stages


def test_one_containerfile_replaces_the_per_service_dockerfiles() -> None:
    assert not [p for p in ("api", "workers", "operator") if (ROOT / p / "Dockerfile").exists()]
    assert (ROOT / ".containerignore").exists()


@pytest.mark.parametrize("service", sorted(ENTRY_POINTS))
def test_each_containerfile_target_runs_its_entry_point_as_numeric_non_root(service: str) -> None:
    stages = _stages()
    assert stages[service][0] == "FROM runtime AS " + service, "each target builds on the shared runtime stage"
    [entry] = [ln for ln in stages[service] if ln.startswith("ENTRYPOINT")]
    assert json.loads(entry.removeprefix("ENTRYPOINT")) == ENTRY_POINTS[service]
    [user] = [ln.split()[1] for st in stages.values() for ln in st if ln.startswith("USER")]
    uid, gid = user.split(":")
    assert uid.isdigit() and int(uid) > 0 and gid.isdigit(), f"USER {user} must be numeric and non-root"
    assert int(uid) == yaml.safe_load((CHART / "values.yaml").read_text())["podSecurityContext"]["runAsUser"]
    if service == "workers":
        assert json.loads(next(ln for ln in stages[service] if ln.startswith("CMD")).removeprefix("CMD")) == ["image"]


def test_the_venv_is_built_once_and_copied_never_bind_mounted() -> None:
    stages = _stages()
    base = re.search(r"ARG PYTHON_IMAGE=(\S+)", "\n".join(stages[""]))
    pattern = r"docker\.io/library/python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?"
    assert base and re.fullmatch(pattern, base.group(1)), "a pinned official slim Python image by default"
    assert [st[0] for st in stages.values() if st and st[0].startswith("FROM ${")] == [
        "FROM ${PYTHON_IMAGE} AS build", "FROM ${PYTHON_IMAGE} AS runtime"]  # fmt: skip
    text = (ROOT / "Containerfile").read_text()
    assert all("pip install" not in ln for ln in stages["runtime"]), "installs happen once, in the build stage"
    # podman 4.3 reuses a stale layer after RUN --mount=type=bind,from=... (buildah #4375): copy, keyed by content.
    assert "type=bind" not in text
    assert {"COPY --from=build /opt/venv /opt/venv", "COPY --from=build /opt/app /opt/app"} <= set(stages["runtime"])
    assert "# syntax=" not in text, "the syntax line needs Docker Hub"
    assert not any(ln.startswith("RUN") for ln in stages["runtime"]), "the runtime stage only copies"


def test_the_worker_pod_templates_pass_the_kind_to_the_entry_point(scenarios) -> None:
    for qw in (o for o in scenarios["minimal-values.yaml"] if o["kind"] == "QueueWorker"):
        kind = qw["metadata"]["name"].rsplit("-", 1)[1]
        container = qw["spec"]["template"]["spec"]["containers"][0]
        assert container["args"] == [kind] and "command" not in container
        assert qw["spec"]["queue"] == f"qw.{kind}"


def test_manifests_api_and_janitor_yaml_are_the_charts_render() -> None:
    """What `make manifests` (scripts/manifests.py) writes: the header, then the real helm's render."""
    assert set(manifests.FILES) == {"api.yaml", "janitor.yaml"}
    for name, templates in manifests.FILES.items():
        header, _, body = (MANIFESTS / name).read_text().partition("\n")
        assert "make manifests" in header
        assert header + "\n" + body == manifests.render(templates), f"manifests/{name} is stale: make manifests"
    assert "manifests:" in (ROOT / "Makefile").read_text()


def test_manifests_kustomization_lists_files_that_exist() -> None:
    kustomization = yaml.safe_load((MANIFESTS / "kustomization.yaml").read_text())
    missing = [r for r in kustomization["resources"] if not (MANIFESTS / r).exists()]
    assert not missing, f"kustomization.yaml lists missing files: {missing}"


def test_the_janitor_is_a_cronjob_that_never_overlaps_and_mounts_the_storage() -> None:
    [cron] = [o for o in render(MINIMAL, sets=("janitor.retentionSeconds=86400",)) if o["kind"] == "CronJob"]
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    [container] = pod["containers"]
    assert container["args"] == ["janitor", "--once"] and "command" not in container
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["QW_RETENTION_SECONDS"] == "86400" and env["QW_PENDING_TIMEOUT_SECONDS"] == "600"
    assert env["QW_STORAGE_DIR"] == "/data/storage" and "QW_DATABASE_URL" in env
    assert {"name": "storage", "mountPath": "/data/storage"} in container["volumeMounts"]
    assert not any(o["kind"] == "CronJob" for o in render(MINIMAL, sets=("janitor.enabled=false",)))


def test_every_pod_of_the_release_can_be_placed_and_the_janitor_goes_where_the_workers_go(tmp_path) -> None:
    """A cluster whose only usable nodes are tainted and labelled: every pod the release creates (the CronJob's too)
    must carry the placement, or one lands where it cannot run. The janitor takes the workers' unless it has its own."""
    toleration = {"key": "dedicated", "operator": "Equal", "value": "qw", "effect": "NoSchedule"}
    placement = {"nodeSelector": {"pool": "qw"}, "tolerations": [toleration]}
    values = tmp_path / "placed.yaml"
    values.write_text(yaml.safe_dump({"operator": placement, "api": placement, "workers": placement}))
    specs = dict(pod_specs(render(MINIMAL, values)))
    assert any(name.startswith("CronJob/") for name in specs), specs.keys()
    unplaced = [n for n, spec in specs.items() if (spec.get("nodeSelector"), spec.get("tolerations")) !=
                ({"pool": "qw"}, [toleration])]  # fmt: skip
    assert not unplaced, unplaced
    own = {"janitor": {"nodeSelector": {"pool": "batch"}, "affinity": {"nodeAffinity": {}}}}
    (tmp_path / "own.yaml").write_text(yaml.safe_dump(own))
    [cron] = [o for o in render(MINIMAL, values, tmp_path / "own.yaml") if o["kind"] == "CronJob"]
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    placed = (pod["nodeSelector"], pod["tolerations"], pod["affinity"])
    assert placed == ({"pool": "batch"}, [toleration], own["janitor"]["affinity"])


# --- queue bounds --------------------------------------------------------------------------------------------


def test_every_service_that_declares_queues_gets_the_same_queue_bounds() -> None:
    """The bounds are queue arguments: the API, each worker kind and the janitor must declare them alike, and a
    value set once in the chart reaches every one of them as the QW_ setting its settings class reads."""
    from qw_core.settings import WorkerSettings

    sets = ("rabbitmq.queueLimits.maxLength=5000", "rabbitmq.queueLimits.deadLetterTtlSeconds=3600")
    seen = {}
    for name, spec in pod_specs(render(MINIMAL, sets=sets)):
        if name.startswith("Deployment/") and name.endswith("-operator"):
            continue
        env = {e["name"]: e.get("value") for c in spec["containers"] for e in c.get("env", [])}
        if "QW_RABBITMQ_URL" not in env:
            continue  # not a service of ours (the helm test's probe pod)
        bounds = {k: v for k, v in env.items() if k.startswith(("QW_QUEUE_MAX", "QW_DEAD_LETTER", "QW_NOTIFICATIONS"))}
        seen[name] = bounds
        settings = WorkerSettings(**{k.removeprefix("QW_").lower(): v for k, v in bounds.items()})
        assert settings.queue_limits().work_max_length == 5000, name
        assert settings.queue_limits().dead_ttl_ms == 3_600_000, name
        assert settings.queue_limits().work_max_bytes == 268435456, name
    assert {
        "Deployment/qw-queueworker-api",
        "QueueWorker/qw-queueworker-image",
        "QueueWorker/qw-queueworker-email",
    } <= set(seen), seen
    assert all(len(b) == 8 for b in seen.values()), seen
    assert len({tuple(sorted(b.items())) for b in seen.values()}) == 1, "services disagree on the queue bounds"


@pytest.mark.parametrize("setting", ["rabbitmq.queueLimits.maxLength=0", "rabbitmq.queueLimits.maxBytes=lots"])
def test_the_schema_refuses_a_queue_bound_that_is_not_a_positive_integer(setting: str) -> None:
    out = helm(*template_args(MINIMAL, sets=(setting,)), check=False)
    assert out.returncode != 0 and "/rabbitmq/queueLimits/" in out.stderr, out.stderr
