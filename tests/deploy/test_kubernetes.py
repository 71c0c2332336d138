"""The Kubernetes manifests (deploy/kubernetes): valid, hardened, and in agreement with the code.

Rendered by tests/deploy/kustomize.py, and checked against ``kubectl kustomize`` where kubectl is
installed (no cluster needed), then:

- every built-in object validates with kubernetes-validate's strict schemas, every custom one
  (ScaledObject, ServiceMonitor, PrometheusRule) against the schemas vendored in
  deploy/kubernetes/schemas; checkov finds no failed check, and every skip carries a reason;
- the manifests agree with a real app instance: the probe and scrape paths answer there, the
  port is the one the server binds, the shutdown budget fits the grace period, the torch
  threads are the CPU limit minus one, every metric a PromQL query names is on /metrics, and
  the uid is the image's.

Without kubernetes-validate or checkov these tests skip, and fail under CI=true.
"""

from __future__ import annotations

import copy
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import kustomize
from tests.deploy.app_facts import AppFacts, app_facts

ROOT = Path(__file__).resolve().parents[2]
KUBE = ROOT / "deploy" / "kubernetes"
SCHEMAS = KUBE / "schemas"
KUSTOMIZATIONS = ("base", "overlays/gpu", "overlays/keda", "monitoring")
PLAIN = ("train/job.yaml", "train/cronjob.yaml")
KUBERNETES_VERSION = "1.30"  # the oldest minor the manifests promise to work on
CHECKOV = Path(os.environ.get("CHECKOV", ROOT / ".cache" / "checkov" / "bin" / "checkov"))
IN_CI = os.environ.get("CI", "").lower() == "true"
POD_KINDS = {"Deployment": ("spec", "template", "spec"), "Job": ("spec", "template", "spec")}


def need(condition: bool, reason: str) -> None:
    if not condition:
        if IN_CI:
            pytest.fail(f"{reason} (required under CI=true)")
        pytest.skip(reason)


@cache
def render(name: str) -> tuple[dict[str, Any], ...]:
    """The objects of one kustomization or plain file. Kustomizations are rendered by
    tests/deploy/kustomize.py and, where kubectl is installed, by ``kubectl kustomize`` too:
    the two must give the same objects."""
    if name.endswith(".yaml"):
        return tuple(doc for doc in yaml.safe_load_all((KUBE / name).read_text()) if doc)
    objects = tuple(kustomize.render(KUBE / name))
    kubectl = shutil.which("kubectl")
    if kubectl is not None:
        result = subprocess.run([kubectl, "kustomize", str(KUBE / name)], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stderr
        theirs = [doc for doc in yaml.safe_load_all(result.stdout) if doc]
        key = _identity
        assert sorted(objects, key=key) == sorted(theirs, key=key), f"{name}: kubectl renders other objects"
    return objects


def _identity(obj: dict[str, Any]) -> tuple[str, str]:
    return obj["kind"], obj["metadata"]["name"]


def all_sources() -> tuple[str, ...]:
    return (*KUSTOMIZATIONS, *PLAIN)


def find(objects: tuple[dict[str, Any], ...], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    if obj["kind"] == "CronJob":
        return obj["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return obj["spec"]["template"]["spec"]


def api_container(objects: tuple[dict[str, Any], ...]) -> dict[str, Any]:
    deployment = find(objects, "Deployment", "headline-classifier")
    return next(c for c in pod_spec(deployment)["containers"] if c["name"] == "api")


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}


def claim_names(spec: dict[str, Any]) -> list[str]:
    return [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


# --- schema validation ------------------------------------------------------------------


@cache
def crd_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text())
        schema = dict(doc["openAPIV3Schema"])
        schema["$defs"] = doc.get("$defs", {})
        schemas[(doc["apiVersion"], doc["kind"])] = schema
    return schemas


def validate(obj: dict[str, Any]) -> None:
    """Raise on the first schema violation: built-in kinds strict, custom ones against the vendored schema."""
    kubernetes_validate = pytest.importorskip("kubernetes_validate") if not IN_CI else __import__("kubernetes_validate")
    import jsonschema

    custom = crd_schemas().get((obj["apiVersion"], obj["kind"]))
    if custom is not None:
        jsonschema.Draft202012Validator(custom).validate(obj)
        return
    kubernetes_validate.validate(obj, KUBERNETES_VERSION, strict=True)


def every_object() -> Iterator[tuple[str, dict[str, Any]]]:
    for source in all_sources():
        for obj in render(source):
            yield source, obj


def test_every_object_validates_strictly() -> None:
    checked = []
    for source, obj in every_object():
        validate(obj)
        checked.append((source, obj["kind"]))
    kinds = {kind for _, kind in checked}
    assert {"Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler", "ScaledObject", "Job"} <= kinds
    assert {"CronJob", "ServiceMonitor", "PrometheusRule", "PersistentVolumeClaim", "NetworkPolicy"} <= kinds


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("ScaledObject", ("spec", "triggers", 0, "metadata", "threshold"), 64),  # must be a string
        ("ScaledObject", ("spec", "minReplicas"), 2),  # the HPA's spelling, not KEDA's
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds"),
        ("PrometheusRule", ("spec", "groups", 0, "rules", 0, "fore"), "10m"),
        ("Deployment", ("spec", "template", "spec", "containers", 0, "readinesProbe"), {}),
    ],
)
def test_schemas_reject_a_misspelt_or_mistyped_field(kind: str, path: tuple[Any, ...], value: Any) -> None:
    """The validation is strict enough to catch the mistakes a reviewer misses."""
    import jsonschema

    source = {"ScaledObject": "overlays/keda", "ServiceMonitor": "monitoring", "PrometheusRule": "monitoring"}
    obj = copy.deepcopy(find(render(source.get(kind, "base")), kind))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises(jsonschema.ValidationError):
        validate(obj)


def test_checkov_finds_no_failed_check_and_every_skip_has_a_reason(tmp_path: Path) -> None:
    need(CHECKOV.is_file(), f"checkov not found at {CHECKOV} (`make checkov` installs it; CHECKOV=path overrides)")
    for source in all_sources():
        out = tmp_path / (source.replace("/", "-").removesuffix(".yaml") + ".yaml")
        out.write_text(yaml.safe_dump_all(render(source), sort_keys=False))
    result = subprocess.run(
        [str(CHECKOV), "-d", str(tmp_path), "--framework", "kubernetes", "--compact", "--quiet", "--skip-download"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "Failed checks: 0" in result.stdout, result.stdout[-4000:]
    for source, obj in every_object():
        for key, value in (obj["metadata"].get("annotations") or {}).items():
            if key.startswith("checkov.io/skip"):
                check, _, reason = value.partition("=")
                assert re.fullmatch(r"CKV2?_K8S_\d+", check), f"{source}: {key}: {value}"
                assert len(reason.split()) >= 5, f"{source}: {obj['kind']} skips {check} without a written reason"


# --- agreement with the code ------------------------------------------------------------


@pytest.fixture(scope="module")
def facts() -> AppFacts:
    return app_facts()


@pytest.mark.parametrize("source", ["base", "overlays/gpu", "overlays/keda"])
def test_probes_and_port_are_the_apps(source: str, facts: AppFacts) -> None:
    container = api_container(render(source))
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    settings = facts.settings_from_env(env_of(container))
    assert ports["http"] == settings.port == facts.image_port
    for probe, expected in (("readinessProbe", 200), ("livenessProbe", 200), ("startupProbe", 200)):
        get = container[probe]["httpGet"]
        assert get["port"] in ("http", settings.port)
        assert facts.status_of(get["path"]) == expected, f"{probe} {get['path']}"
    assert container["readinessProbe"]["httpGet"]["path"] == facts.ready_path
    # Liveness answers before the model is loaded: only readiness says the start is over.
    assert container["startupProbe"]["httpGet"]["path"] == facts.ready_path
    assert container["livenessProbe"]["httpGet"]["path"] == facts.live_path
    # Readiness must tell "draining" apart from "alive": the same path would keep traffic on a draining pod.
    assert facts.ready_path != facts.live_path


def test_service_pdb_autoscalers_and_monitor_select_the_api_pods() -> None:
    base, keda, monitoring = render("base"), render("overlays/keda"), render("monitoring")
    deployment = find(base, "Deployment")
    pod_labels = deployment["spec"]["template"]["metadata"]["labels"]
    service = find(base, "Service")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert {p["targetPort"] for p in service["spec"]["ports"]} <= {p["name"] for p in api_container(base)["ports"]}
    assert find(base, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert find(base, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    assert not [o for o in keda if o["kind"] == "HorizontalPodAutoscaler"], "two autoscalers on one Deployment"
    assert find(keda, "ScaledObject")["spec"]["scaleTargetRef"]["name"] == deployment["metadata"]["name"]
    monitor = find(monitoring, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    assert {e["port"] for e in monitor["spec"]["endpoints"]} <= {p["name"] for p in service["spec"]["ports"]}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    api_policy = find(base, "NetworkPolicy", "headline-classifier-api")
    assert api_policy["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()


def test_scrape_path_serves_prometheus_metrics(facts: AppFacts) -> None:
    for endpoint in find(render("monitoring"), "ServiceMonitor")["spec"]["endpoints"]:
        assert facts.status_of(endpoint["path"]) == 200
        assert endpoint["path"] == facts.metrics_path


@pytest.mark.parametrize("source", ["base", "overlays/gpu", "overlays/keda"])
def test_grace_period_outlasts_prestop_drain_and_keep_alive(source: str, facts: AppFacts) -> None:
    objects = render(source)
    spec = pod_spec(find(objects, "Deployment"))
    container = api_container(objects)
    settings = facts.settings_from_env(env_of(container))
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep", command
    pre_stop = float(command[1])
    budget = pre_stop + facts.idle_grace_s + settings.shutdown_timeout_s + settings.keep_alive_timeout_s
    assert spec["terminationGracePeriodSeconds"] > budget
    # The pre-stop pause must cover at least one readiness period, or the pod may still get new
    # connections after it began to drain.
    assert pre_stop >= container["readinessProbe"]["periodSeconds"]


@pytest.mark.parametrize("source", ["base", "overlays/gpu", "overlays/keda"])
def test_torch_threads_are_the_cpu_limit_minus_one(source: str, facts: AppFacts) -> None:
    container = api_container(render(source))
    limit = cpu_cores(container["resources"]["limits"]["cpu"])
    assert limit == int(limit) and limit >= 2, "give the event loop and the model a whole CPU each"
    settings = facts.settings_from_env(env_of(container))
    assert settings.torch_threads == int(limit) - 1
    resources = container["resources"]
    assert cpu_cores(resources["requests"]["cpu"]) <= limit


def test_gpu_overlay_asks_for_a_gpu_and_runs_the_model_there(facts: AppFacts) -> None:
    container = api_container(render("overlays/gpu"))
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert facts.settings_from_env(env_of(container)).device == "cuda"
    assert container["image"].endswith("-cuda")
    base = api_container(render("base"))
    assert base["resources"]["limits"].keys() == {"cpu", "memory"}


def test_every_promql_metric_is_exported(facts: AppFacts) -> None:
    queries = [t["metadata"]["query"] for t in find(render("overlays/keda"), "ScaledObject")["spec"]["triggers"]
               if t["type"] == "prometheus"]  # fmt: skip
    rules = find(render("monitoring"), "PrometheusRule")["spec"]["groups"]
    queries += [rule["expr"] for group in rules for rule in group["rules"]]
    assert len(queries) >= 3
    for query in queries:
        names = promql_metric_names(query)
        assert names, query
        missing = names - facts.exported_metrics
        assert not missing, f"{missing} not exported on /metrics (query: {query})"


def test_prometheus_rule_is_the_monitoring_folder_alerts() -> None:
    rule = find(render("monitoring"), "PrometheusRule")
    alerts = yaml.safe_load((ROOT / "monitoring" / "drift-alerts.yml").read_text())
    assert rule["spec"]["groups"] == alerts["groups"]


def test_pods_run_as_the_image_user_with_nothing_to_escalate(facts: AppFacts) -> None:
    pods = [(s, o) for s, o in every_object() if o["kind"] in ("Deployment", "Job", "CronJob")]
    assert len(pods) >= 5
    for source, obj in pods:
        spec = pod_spec(obj)
        context = spec["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == context["runAsGroup"] == facts.image_uid, source
        assert context["fsGroup"] == facts.image_uid  # the volume is writable by the training job's user
        assert spec["automountServiceAccountToken"] is False
        for container in [*spec.get("initContainers", []), *spec["containers"]]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["readOnlyRootFilesystem"] is True, container["name"]
            assert sc["capabilities"]["drop"] == ["ALL"] and not sc.get("capabilities", {}).get("add")
            assert {"cpu", "memory"} <= container["resources"]["limits"].keys()


def test_artifacts_volume_is_shared_and_seeded_with_the_default_model() -> None:
    base = render("base")
    claim = find(base, "PersistentVolumeClaim")["metadata"]["name"]
    spec = pod_spec(find(base, "Deployment"))
    assert claim in claim_names(spec)
    api_mounts = {m["mountPath"]: m for m in api_container(base)["volumeMounts"]}
    assert api_mounts["/app/artifacts"].get("readOnly") is True
    settings_dir = env_of(api_container(base))["HC_ARTIFACTS_DIR"]
    assert settings_dir == "/app/artifacts"
    seed = spec["initContainers"][0]
    assert seed["image"] == api_container(base)["image"]  # the image that carries the default model
    assert "mv -T" in seed["command"][-1]  # renamed into place, never half-copied
    for source in PLAIN:
        train_spec = pod_spec(render(source)[0])
        assert claim_names(train_spec) == [claim]
        args = train_spec["containers"][0]["args"]
        assert args[args.index("--artifacts-dir") + 1] == settings_dir


# --- PromQL -----------------------------------------------------------------------------

PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}


def promql_metric_names(query: str) -> set[str]:
    """Metric names in a PromQL expression (not functions, keywords, labels or literals)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'', "", query)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[A-Za-z_:][\w:]*", text):
        rest = text[match.end() :].lstrip()
        if rest.startswith("(") or match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


@pytest.mark.parametrize(
    ("query", "names"),
    [
        ('sum(rate(a_total{x="y"}[5m])) / sum by (instance) (b)', {"a_total", "b"}),
        ('max by (i) (c{le="0.6"}) - on (i) d > 0.15 and on (i) e offset 5m > 1e3', {"c", "d", "e"}),
        ("histogram_quantile(0.99, sum without (pod) (rate(h_bucket[1m])))", {"h_bucket"}),
    ],
)
def test_promql_metric_names(query: str, names: set[str]) -> None:
    assert promql_metric_names(query) == names
