"""The Helm chart in helm/llm-gateway, proven offline: config, lint, render, Kubernetes schemas.

The chart is linted and rendered by the real Helm binary in both modes (`gateway`: its own
Deployment and Service; `sidecar`: a patch for an application's Deployment), for values.yaml and
each file of `ci/`. Every manifest is validated by `kubernetes_validate` in strict mode (unknown
fields are errors) against Kubernetes 1.34: the newest minor version that both
kubernetes-validate ships schemas for and the kubectl v1.33 beside helm supports (kubectl works
with API servers one minor version either side). The Prometheus Operator's kinds, which
kubernetes-validate does not know, are validated against a minimal JSON schema of their required
shape, and the PrometheusRule's groups by the real `promtool check rules`. The gateway.yaml each
values file renders passes `extproc check-config`, and the Envoy bootstrap a pod would derive
from it passes `envoy --mode validate`. The sidecar patch is applied to the example application
(helm/examples/sidecar-app) with the real `kubectl kustomize`.

helm and kubectl come from `scripts/install-helm.sh`, promtool from `scripts/install-promtool.sh`
(both run by `make tools`); without them these tests fail rather than skip.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from extproc.bootstrap import render_bootstrap, render_static_bootstrap, render_static_yaml
from extproc.cli import build_parser
from extproc.config.changes import RESTART_ONLY
from extproc.config.loading import parse_config
from extproc.config.schema import GatewayConfig
from extproc.dev.stack import find_envoy_binary
from tests.monitoring import RULES, run_promtool

Json = dict[str, Any]

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "llm-gateway"
CI = CHART / "ci"
CI_FILES = ["default-values.yaml", "full-values.yaml", "sidecar-values.yaml"]
EXAMPLE_APP = REPO / "helm" / "examples" / "sidecar-app"
PATCH_SCRIPT = REPO / "helm" / "sidecar-patch.sh"
KUBE_VERSION = "1.34"
RELEASE = "gw"
FULLNAME = f"{RELEASE}-llm-gateway"
NAMESPACE = "llm"
CONFIG_FILE = "/etc/llm-gateway/gateway.yaml"
SOCKET_DIR = "/var/run/llm-gateway"
SOCKET = f"{SOCKET_DIR}/extproc.sock"
XDS_DIR = "/var/run/llm-gateway-xds"
CLIENT_KEYS_DIR = "/etc/llm-gateway-client-keys"
REDIS_URL_ENV = "LLM_GATEWAY_REDIS_URL"
CHECKSUM = "checksum/llm-gateway-config"


def chart_values() -> Json:
    values: Json = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def ci_values(name: str) -> Json:
    values: Json = yaml.safe_load((CI / name).read_text(encoding="utf-8")) or {}
    return values


def effective_values(name: str) -> Json:
    """values.yaml overlaid with a ci file the way Helm merges (maps key by key, lists whole)."""

    def merge(base: Json, over: Json) -> Json:
        out = dict(base)
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(out.get(key), dict):
                out[key] = merge(out[key], value)
            else:
                out[key] = value
        return out

    return merge(chart_values(), ci_values(name))


# --- tools --------------------------------------------------------------------------------------


def tool(env: str, name: str, installer: str) -> Path:
    override = os.environ.get(env)
    binary = Path(override) if override else REPO / ".tools" / name
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"{name} binary not found at {binary}: run {installer} (make tools), "
            f"or set {env} to a {name} executable"
        )
    return binary


def run(*command: str | Path, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(c) for c in command],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        **kwargs,
    )


class Helm:
    """The helm binary, run with its config, cache and data homes in a private directory."""

    def __init__(self, binary: Path, home: Path) -> None:
        self.binary = binary
        self.env = {
            **os.environ,
            "HELM_CONFIG_HOME": str(home / "config"),
            "HELM_CACHE_HOME": str(home / "cache"),
            "HELM_DATA_HOME": str(home / "data"),
        }

    def run(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run(self.binary, *args, cwd=REPO, env=self.env)


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    binary = tool("HELM_BIN", "helm", "scripts/install-helm.sh")
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


@pytest.fixture(scope="module")
def kubectl() -> Path:
    return tool("KUBECTL_BIN", "kubectl", "scripts/install-helm.sh")


def template(helm: Helm, *extra: str) -> list[Json]:
    result = helm.run(
        "template",
        RELEASE,
        str(CHART),
        "--namespace",
        NAMESPACE,
        "--kube-version",
        f"{KUBE_VERSION}.0",
        *extra,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def refused(helm: Helm, *extra: str) -> str:
    """Render `extra`, which must fail; helm's stderr."""
    result = helm.run("template", RELEASE, str(CHART), *extra)
    assert result.returncode != 0, f"rendered although it should fail: {extra}"
    return result.stderr


def by_name(docs: list[Json]) -> dict[str, Json]:
    """The manifests by `Kind/name` (each once)."""
    keys = [f"{doc['kind']}/{doc['metadata']['name']}" for doc in docs]
    assert len(keys) == len(set(keys)), keys
    return dict(zip(keys, docs, strict=True))


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, Json]:
    return by_name(template(helm))


@pytest.fixture(scope="module")
def ci_rendered(helm: Helm) -> dict[str, dict[str, Json]]:
    return {name: by_name(template(helm, "-f", str(CI / name))) for name in CI_FILES}


def configmap_yaml(docs: dict[str, Json]) -> Json:
    loaded: Json = yaml.safe_load(docs[f"ConfigMap/{FULLNAME}"]["data"]["gateway.yaml"])
    return loaded


def configmap_config(docs: dict[str, Json]) -> GatewayConfig:
    return parse_config(configmap_yaml(docs), "rendered ConfigMap gateway.yaml")


def deployment(docs: dict[str, Json]) -> Json:
    return docs[f"Deployment/{FULLNAME}"]


def pod_spec(docs: dict[str, Json]) -> Json:
    spec: Json = deployment(docs)["spec"]["template"]["spec"]
    return spec


def containers(docs: dict[str, Json]) -> dict[str, Json]:
    return {c["name"]: c for c in pod_spec(docs)["containers"]}


def mounts(container: Json) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}


def sidecar_patch(docs: dict[str, Json]) -> Json:
    patch: Json = yaml.safe_load(docs[f"ConfigMap/{FULLNAME}-sidecar-patch"]["data"]["patch.yaml"])
    return patch


# --- schemas of the Prometheus Operator kinds (not in kubernetes-validate) ---------------------

_DURATION = {"type": "string", "pattern": "^([0-9]+(ms|s|m|h|d|w|y))+$"}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def _operator_manifest(kind: str, spec: Json) -> Json:
    """The schema of a Prometheus Operator manifest of `kind` whose spec is `spec`."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


CRD_SCHEMAS: dict[str, Json] = {
    "ServiceMonitor": _operator_manifest(
        "ServiceMonitor",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["selector", "endpoints"],
            "properties": {
                "selector": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {
                        "matchLabels": {
                            "type": "object",
                            "additionalProperties": {"type": "string"},
                        }
                    },
                },
                "endpoints": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["port"],
                        "properties": {
                            "port": {"type": "string"},
                            "path": {"type": "string", "pattern": "^/"},
                            "interval": _DURATION,
                            "scrapeTimeout": _DURATION,
                        },
                    },
                },
            },
        },
    ),
    "PrometheusRule": _operator_manifest(
        "PrometheusRule",
        {
            "type": "object",
            "additionalProperties": False,
            "required": ["groups"],
            "properties": {
                "groups": {
                    "type": "array",
                    "minItems": 1,
                    "items": {
                        "type": "object",
                        "required": ["name", "rules"],
                        "properties": {
                            "name": {"type": "string"},
                            "interval": _DURATION,
                            "rules": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "required": ["expr"],
                                    "properties": {
                                        "alert": {"type": "string"},
                                        "record": {"type": "string"},
                                        "expr": {"type": "string"},
                                        "for": _DURATION,
                                        "labels": {"type": "object"},
                                        "annotations": {"type": "object"},
                                    },
                                },
                            },
                        },
                    },
                }
            },
        },
    ),
}


def validate_manifest(doc: Json) -> None:
    """Fails the test unless `doc` is a valid manifest of its kind."""
    kind = doc["kind"]
    if kind in CRD_SCHEMAS:
        try:
            jsonschema.validate(doc, CRD_SCHEMAS[kind])
        except jsonschema.ValidationError as exc:
            pytest.fail(f"{kind} is not a valid {kind}: {exc.message} at {list(exc.path)}")
        return
    try:
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    except kubernetes_validate.ValidationError as exc:
        pytest.fail(f"{kind} is not valid Kubernetes {KUBE_VERSION}: {exc.message}")


# --- the chart and the package -----------------------------------------------------------------


def test_chart_version_and_app_version_are_the_package_version() -> None:
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text(encoding="utf-8"))
    project = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    version = project["project"]["version"]
    assert chart["version"] == version
    assert chart["appVersion"] == version


# --- lint and render of every values file ------------------------------------------------------


@pytest.mark.parametrize("name", [None, *CI_FILES], ids=["values.yaml", *CI_FILES])
def test_helm_lint_is_clean(helm: Helm, name: str | None) -> None:
    values = ["-f", str(CI / name)] if name else []
    result = helm.run(
        "lint", "--strict", "--kube-version", f"{KUBE_VERSION}.0", *values, str(CHART)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


EXPECTED_MANIFESTS = {
    "default-values.yaml": {
        f"ConfigMap/{FULLNAME}",
        f"Deployment/{FULLNAME}",
        f"Service/{FULLNAME}",
        f"PodDisruptionBudget/{FULLNAME}",
    },
    "full-values.yaml": {
        f"ConfigMap/{FULLNAME}",
        f"Deployment/{FULLNAME}",
        f"Service/{FULLNAME}",
        f"Service/{FULLNAME}-metrics",
        f"PodDisruptionBudget/{FULLNAME}",
        f"HorizontalPodAutoscaler/{FULLNAME}",
        f"ServiceMonitor/{FULLNAME}",
        f"PrometheusRule/{FULLNAME}",
        f"NetworkPolicy/{FULLNAME}",
    },
    "sidecar-values.yaml": {
        f"ConfigMap/{FULLNAME}",
        f"ConfigMap/{FULLNAME}-sidecar-patch",
        f"Service/{FULLNAME}-metrics",
        f"ServiceMonitor/{FULLNAME}",
        f"PrometheusRule/{FULLNAME}",
    },
}


@pytest.mark.parametrize("name", CI_FILES)
def test_ci_values_render_valid_manifests(
    ci_rendered: dict[str, dict[str, Json]], name: str
) -> None:
    docs = ci_rendered[name]
    assert set(docs) == EXPECTED_MANIFESTS[name]
    for doc in docs.values():
        validate_manifest(doc)
    # The sidecar patch is a partial Deployment: it is validated merged into the example app.


def test_default_values_render_the_same_as_the_empty_ci_file(
    rendered: dict[str, Json], ci_rendered: dict[str, dict[str, Json]]
) -> None:
    assert rendered == ci_rendered["default-values.yaml"]


@pytest.mark.parametrize("name", CI_FILES)
def test_ci_values_gateway_yaml_passes_check_config(
    ci_rendered: dict[str, dict[str, Json]], name: str, tmp_path: Path
) -> None:
    cli = Path(sys.executable).parent / "extproc"
    assert cli.is_file(), f"the extproc command is missing next to {sys.executable}"
    path = tmp_path / "gateway.yaml"
    path.write_text(
        ci_rendered[name][f"ConfigMap/{FULLNAME}"]["data"]["gateway.yaml"], encoding="utf-8"
    )
    result = run(cli, "check-config", "--skip-credentials", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK" in result.stdout


@pytest.mark.parametrize("name", CI_FILES)
def test_ci_values_envoy_bootstrap_passes_envoy_validate(
    ci_rendered: dict[str, dict[str, Json]], name: str, tmp_path: Path
) -> None:
    config = configmap_config(ci_rendered[name])
    bootstrap = render_bootstrap(config)
    (extproc,) = bootstrap["static_resources"]["clusters"][:1]
    endpoint = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["pipe"]["path"] == SOCKET
    for source in ("lds_config", "cds_config"):
        watched = bootstrap["dynamic_resources"][source]["path_config_source"]
        assert watched["watched_directory"] == {"path": XDS_DIR}
    static = render_static_bootstrap(config)
    address = static["static_resources"]["listeners"][0]["address"]["socket_address"]
    wanted = "127.0.0.1" if name == "sidecar-values.yaml" else "0.0.0.0"
    assert address == {"address": wanted, "port_value": config.listener.port}

    path = tmp_path / "envoy.yaml"
    path.write_text(render_static_yaml(config), encoding="utf-8")
    result = run(find_envoy_binary(), "--mode", "validate", "-c", path, "-l", "warn")
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("name", ["full-values.yaml", "sidecar-values.yaml"])
def test_prometheus_rule_carries_the_rules_file_and_promtool_accepts_it(
    ci_rendered: dict[str, dict[str, Json]], name: str, tmp_path: Path
) -> None:
    spec = ci_rendered[name][f"PrometheusRule/{FULLNAME}"]["spec"]
    assert spec["groups"] == yaml.safe_load(RULES.read_text(encoding="utf-8"))["groups"]
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(spec), encoding="utf-8")
    result = run_promtool("check", "rules", path)
    assert result.returncode == 0, result.stdout + result.stderr


# --- one config: values.gateway plus what the chart derives ------------------------------------


def derived(mode: str) -> Json:
    """The settings helm/README.md ("One config") says the chart adds where they are unset."""
    return {
        "listener": {"address": "127.0.0.1" if mode == "sidecar" else "0.0.0.0"},
        "processor": {"admin_address": "0.0.0.0", "unix_socket": SOCKET},
        "reload": {"xds_directory": XDS_DIR},
    }


def with_defaults(gateway: Json, extra: Json) -> Json:
    out = copy.deepcopy(gateway)
    for section, settings in extra.items():
        for key, value in settings.items():
            out.setdefault(section, {}).setdefault(key, value)
    return out


@pytest.mark.parametrize("name", CI_FILES)
def test_configmap_is_the_values_gateway_plus_the_derived_settings(
    ci_rendered: dict[str, dict[str, Json]], name: str
) -> None:
    values = effective_values(name)
    expected = with_defaults(values["gateway"], derived(values["mode"]))
    redis = values["externalRedis"]
    if redis["existingSecret"]:
        expected = with_defaults(expected, {"governance": {}})
        expected["governance"]["redis"] = {"url_env": REDIS_URL_ENV}
    elif redis["url"]:
        expected = with_defaults(expected, {"governance": {}})
        expected["governance"]["redis"] = {"url": redis["url"]}
    assert configmap_yaml(ci_rendered[name]) == expected


def test_default_config_binds_for_the_pod(rendered: dict[str, Json]) -> None:
    config = configmap_config(rendered)
    assert (config.listener.address, config.listener.port) == ("0.0.0.0", 8080)
    assert str(config.processor.unix_socket) == SOCKET
    assert config.processor.admin_address == "0.0.0.0"
    assert config.envoy_admin.address == "127.0.0.1"
    assert config.auth.enabled
    assert str(config.reload.xds_directory) == XDS_DIR


def test_overridden_values_keep_their_types_through_the_configmap(
    helm: Helm, tmp_path: Path
) -> None:
    # Date-like, number-like and large values must survive Helm's toYaml as the same types.
    overrides = {
        "gateway": {
            "limits": {"max_body_bytes": 64 * 1024 * 1024, "default_timeout_seconds": 30.5},
            "providers": [
                {
                    "name": "azure-eu",
                    "type": "azure",
                    "base_url": "https://contoso.openai.azure.com",
                    "api_version": "2024-10-21",
                    "api_key_env": "AZURE_OPENAI_API_KEY",
                },
                {"name": "local", "type": "vllm", "base_url": "http://vllm.llm.svc:8000/v1"},
            ],
            "models": [
                {"name": "gpt-4o", "targets": [{"provider": "azure-eu", "model": "1e3"}]},
                {
                    "name": "llama",
                    "targets": [
                        {"provider": "local", "model": "meta-llama/Llama-3.1-8B", "weight": 3},
                        {"provider": "azure-eu", "model": "012"},
                    ],
                },
            ],
        },
        "terminationGracePeriodSeconds": 60,
    }
    # JSON is YAML with every string quoted: PyYAML would leave "1e3" bare, which Helm's YAML
    # parser reads as a number before the chart ever sees it.
    values_file = tmp_path / "values.json"
    values_file.write_text(json.dumps(overrides), encoding="utf-8")
    docs = by_name(template(helm, "--values", str(values_file)))
    for doc in docs.values():
        validate_manifest(doc)
    config = configmap_config(docs)
    assert config.providers[0].api_version == "2024-10-21"
    assert config.limits.max_body_bytes == 64 * 1024 * 1024
    assert config.limits.default_timeout_seconds == 30.5
    assert [t.model for t in config.models[1].targets] == ["meta-llama/Llama-3.1-8B", "012"]
    assert config.models[0].targets[0].model == "1e3"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 60
    render_bootstrap(config)


# --- gateway mode: the pod -----------------------------------------------------------------------


def test_one_pod_two_containers_sharing_config_socket_and_xds(rendered: dict[str, Json]) -> None:
    spec = pod_spec(rendered)
    assert deployment(rendered)["spec"]["replicas"] == chart_values()["replicaCount"]
    found = containers(rendered)
    assert list(found) == ["extproc", "envoy"]
    assert found["extproc"]["image"] == found["envoy"]["image"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    tmp_volumes = set()
    for container in found.values():
        paths = mounts(container)
        config_volume = volumes[paths["/etc/llm-gateway"]]
        assert config_volume["configMap"]["name"] == FULLNAME
        assert "emptyDir" in volumes[paths[SOCKET_DIR]]
        assert "emptyDir" in volumes[paths[XDS_DIR]]
        assert "emptyDir" in volumes[paths["/tmp"]]
        tmp_volumes.add(paths["/tmp"])
        assert CLIENT_KEYS_DIR not in paths
    assert len(tmp_volumes) == 2
    assert mounts(found["extproc"])[SOCKET_DIR] == mounts(found["envoy"])[SOCKET_DIR]
    assert mounts(found["extproc"])[XDS_DIR] == mounts(found["envoy"])[XDS_DIR]


def test_extproc_container_serves_the_config_with_admin_probes(rendered: dict[str, Json]) -> None:
    extproc = containers(rendered)["extproc"]
    command = extproc["command"]
    assert command[0] == "extproc"
    assert command[-3:] == ["serve", "--config", CONFIG_FILE]
    assert extproc["ports"] == [{"name": "admin", "containerPort": 9090, "protocol": "TCP"}]
    assert extproc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert extproc["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    secret = chart_values()["credentials"]["existingSecret"]
    assert extproc["envFrom"] == [{"secretRef": {"name": secret, "optional": False}}]
    assert "restartPolicy" not in extproc


def test_envoy_container_renders_its_bootstrap_from_the_same_config(
    rendered: dict[str, Json],
) -> None:
    envoy = containers(rendered)["envoy"]
    assert envoy["command"][:2] == ["sh", "-c"]
    script = " ".join(envoy["command"][2].split())
    assert script.startswith(
        f"extproc render-envoy --config {CONFIG_FILE} -o /tmp/envoy.yaml --xds-dir {XDS_DIR} "
        "&& exec envoy -c /tmp/envoy.yaml --disable-hot-restart "
    )
    assert envoy["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    assert envoy["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    # Provider keys stay in the processor.
    assert "envFrom" not in envoy
    assert "env" not in envoy


def test_service_exposes_the_envoy_listener(rendered: dict[str, Json]) -> None:
    service = rendered[f"Service/{FULLNAME}"]["spec"]
    assert service["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    assert service["selector"].items() <= pod_labels.items()


def test_pod_is_locked_down_and_outlives_the_processor_drain(rendered: dict[str, Json]) -> None:
    spec = pod_spec(rendered)
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["automountServiceAccountToken"] is False
    for container in containers(rendered).values():
        context = container["securityContext"]
        assert context["readOnlyRootFilesystem"] is True
        assert context["allowPrivilegeEscalation"] is False
        assert context["capabilities"]["drop"] == ["ALL"]
    grace = configmap_config(rendered).processor.shutdown_grace_seconds
    drain = chart_values()["drainDelaySeconds"]
    assert spec["terminationGracePeriodSeconds"] >= drain + grace


def pre_stop(container: Json) -> argparse.Namespace:
    """A container's preStop command, parsed by the `extproc` command line it runs."""
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "extproc", command
    return build_parser().parse_args(command[1:])


def test_shutdown_hooks_drain_envoy_first_and_the_processor_outlives_it(
    rendered: dict[str, Json],
) -> None:
    found = containers(rendered)
    grace = configmap_config(rendered).processor.shutdown_grace_seconds
    drain = chart_values()["drainDelaySeconds"]
    envoy = pre_stop(found["envoy"])
    assert (envoy.command, envoy.config, envoy.delay, envoy.grace) == (
        "drain",
        CONFIG_FILE,
        drain,
        None,
    )
    processor = pre_stop(found["extproc"])
    assert (processor.command, processor.config) == ("wait-envoy-exit", CONFIG_FILE)
    assert processor.timeout > drain + grace
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] > processor.timeout


# --- gateway mode: the extras ------------------------------------------------------------------


def test_autoscaler_replaces_the_replica_count(ci_rendered: dict[str, dict[str, Json]]) -> None:
    docs = ci_rendered["full-values.yaml"]
    assert "replicas" not in deployment(docs)["spec"]
    hpa = docs[f"HorizontalPodAutoscaler/{FULLNAME}"]["spec"]
    wanted = ci_values("full-values.yaml")["autoscaling"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": FULLNAME,
    }
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (
        wanted["minReplicas"],
        wanted["maxReplicas"],
    )
    (metric,) = hpa["metrics"]
    assert metric["resource"]["name"] == "cpu"
    assert metric["resource"]["target"]["averageUtilization"] == 60
    # CPU utilisation is of the requests: every container must request CPU.
    assert all("cpu" in c["resources"]["requests"] for c in containers(docs).values())


def test_disruption_budget_and_spread_select_the_gateway_pods(rendered: dict[str, Json]) -> None:
    pod_labels = deployment(rendered)["spec"]["template"]["metadata"]["labels"]
    pdb = rendered[f"PodDisruptionBudget/{FULLNAME}"]["spec"]
    assert pdb["maxUnavailable"] == 1
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    spread = pod_spec(rendered)["topologySpreadConstraints"]
    assert [c["topologyKey"] for c in spread] == [
        "kubernetes.io/hostname",
        "topology.kubernetes.io/zone",
    ]
    for constraint in spread:
        assert constraint["whenUnsatisfiable"] == "ScheduleAnyway"
        assert constraint["labelSelector"]["matchLabels"].items() <= pod_labels.items()


def test_spread_constraints_can_be_replaced_or_turned_off(helm: Helm, tmp_path: Path) -> None:
    own = [
        {
            "maxSkew": 2,
            "topologyKey": "example.com/rack",
            "whenUnsatisfiable": "DoNotSchedule",
            "labelSelector": {"matchLabels": {"app": "x"}},
        }
    ]
    path = tmp_path / "spread.json"
    path.write_text(json.dumps({"topologySpreadConstraints": own}), encoding="utf-8")
    assert pod_spec(by_name(template(helm, "-f", str(path))))["topologySpreadConstraints"] == own
    off = by_name(template(helm, "--set", "topologySpread.enabled=false"))
    assert "topologySpreadConstraints" not in pod_spec(off)
    assert f"PodDisruptionBudget/{FULLNAME}" not in by_name(
        template(helm, "--set", "podDisruptionBudget.enabled=false")
    )


def test_redis_url_from_a_secret_reaches_only_the_processor(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["full-values.yaml"]
    redis = ci_values("full-values.yaml")["externalRedis"]
    assert configmap_config(docs).governance.redis.url_env == REDIS_URL_ENV
    assert "redis://" not in docs[f"ConfigMap/{FULLNAME}"]["data"]["gateway.yaml"]
    found = containers(docs)
    env = {e["name"]: e for e in found["extproc"]["env"]}
    assert env[REDIS_URL_ENV]["valueFrom"]["secretKeyRef"] == {
        "name": redis["existingSecret"],
        "key": redis["secretKey"],
    }
    assert "env" not in found["envoy"]


def test_client_keys_secret_is_mounted_read_only_in_the_processor_only(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["full-values.yaml"]
    found = containers(docs)
    volumes = {v["name"]: v for v in pod_spec(docs)["volumes"]}
    mount = next(m for m in found["extproc"]["volumeMounts"] if m["mountPath"] == CLIENT_KEYS_DIR)
    assert mount["readOnly"] is True
    secret = ci_values("full-values.yaml")["clientKeys"]["existingSecret"]
    assert volumes[mount["name"]]["secret"]["secretName"] == secret
    assert CLIENT_KEYS_DIR not in mounts(found["envoy"])


def test_metrics_service_and_service_monitor_scrape_the_admin_port(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["full-values.yaml"]
    metrics = docs[f"Service/{FULLNAME}-metrics"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert metrics["spec"]["selector"].items() <= pod_labels.items()
    (port,) = metrics["spec"]["ports"]
    assert port["targetPort"] == "admin"
    monitor = docs[f"ServiceMonitor/{FULLNAME}"]
    selector = monitor["spec"]["selector"]["matchLabels"]
    assert selector.items() <= metrics["metadata"]["labels"].items()
    # The clients' Service carries no admin port and is not scraped.
    assert not selector.items() <= docs[f"Service/{FULLNAME}"]["metadata"]["labels"].items()
    assert monitor["spec"]["endpoints"][0]["port"] == port["name"]
    assert monitor["spec"]["endpoints"][0]["path"] == "/metrics"
    assert monitor["metadata"]["labels"]["release"] == "kube-prometheus-stack"


def test_network_policy_opens_the_listener_metrics_dns_providers_redis_and_tracing(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["full-values.yaml"]
    values = ci_values("full-values.yaml")
    spec = docs[f"NetworkPolicy/{FULLNAME}"]["spec"]
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert spec["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    listener, admin = spec["ingress"]
    assert listener["ports"] == [{"port": 8080, "protocol": "TCP"}]
    assert listener["from"] == values["networkPolicy"]["ingressFrom"]
    assert admin["ports"] == [{"port": 9090, "protocol": "TCP"}]
    assert admin["from"] == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]
    egress_ports = {(p["port"], p["protocol"]) for rule in spec["egress"] for p in rule["ports"]}
    # https providers, the vLLM service's :8000, Redis (URL in a Secret: redisPort), OTLP.
    assert egress_ports == {(53, "UDP"), (53, "TCP"), (443, "TCP"), (8000, "TCP"), (6379, "TCP"),
                            (4317, "TCP")}  # fmt: skip


# --- sidecar mode --------------------------------------------------------------------------------


def test_sidecar_mode_renders_a_patch_of_native_sidecars(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["sidecar-values.yaml"]
    values = ci_values("sidecar-values.yaml")
    patch = sidecar_patch(docs)
    assert (patch["apiVersion"], patch["kind"]) == ("apps/v1", "Deployment")
    assert patch["metadata"] == {"name": values["sidecar"]["deploymentName"]}
    template_ = patch["spec"]["template"]
    assert CHECKSUM in template_["metadata"]["annotations"]
    spec = template_["spec"]
    # The application's pod keeps its own securityContext, service account and containers.
    assert set(spec) == {"initContainers", "volumes"}
    init = spec["initContainers"]
    # extproc first, envoy second: Envoy, which needs the processor while draining, stops first.
    assert [c["name"] for c in init] == ["extproc", "envoy"]
    assert all(c["restartPolicy"] == "Always" for c in init)
    extproc, envoy = init
    admin_port = values["gateway"]["processor"]["admin_port"]
    assert extproc["ports"] == [
        {"name": "llmgw-admin", "containerPort": admin_port, "protocol": "TCP"}
    ]
    assert extproc["startupProbe"]["httpGet"] == {"path": "/healthz", "port": "llmgw-admin"}
    assert extproc["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "llmgw-admin"}
    # Envoy's listener is on loopback: the app waits for the processor's /readyz, which needs
    # Envoy LIVE.
    assert envoy["startupProbe"]["httpGet"] == {"path": "/readyz", "port": admin_port}
    assert "ports" not in envoy
    assert "readinessProbe" not in envoy
    config = configmap_config(docs)
    assert config.processor.ready_requires_envoy is True
    assert (config.listener.address, config.listener.port) == ("127.0.0.1", 18080)
    pod_context = chart_values()["podSecurityContext"]
    for container in init:
        context = container["securityContext"]
        assert context["runAsNonRoot"] is True
        assert context["runAsUser"] == pod_context["runAsUser"]
        assert context["readOnlyRootFilesystem"] is True
    volumes = {v["name"] for v in spec["volumes"]}
    for container in init:
        assert {m["name"] for m in container["volumeMounts"]} <= volumes
        # Prefixed, so they merge with none of the application's volumes.
        assert all(m["name"].startswith("llm-gateway-") for m in container["volumeMounts"])
    assert config.governance.redis.url == values["externalRedis"]["url"]


def test_sidecar_metrics_service_selects_the_application_pods(
    ci_rendered: dict[str, dict[str, Json]],
) -> None:
    docs = ci_rendered["sidecar-values.yaml"]
    metrics = docs[f"Service/{FULLNAME}-metrics"]["spec"]
    assert metrics["selector"] == ci_values("sidecar-values.yaml")["sidecar"]["podLabels"]
    assert metrics["ports"][0]["targetPort"] == "llmgw-admin"


def kustomized_example(
    helm: Helm, kubectl: Path, tmp_path: Path, *helm_args: str
) -> tuple[Json, Json]:
    """The example app's Deployment as written, and after the chart's patch (kubectl kustomize)."""
    app = tmp_path / "sidecar-app"
    shutil.copytree(EXAMPLE_APP, app)
    env = {**helm.env, "HELM": str(helm.binary), "PYTHON": sys.executable}
    result = run("sh", PATCH_SCRIPT, RELEASE, "--namespace", NAMESPACE, *helm_args, env=env)
    assert result.returncode == 0, result.stderr
    (app / "patch.yaml").write_text(result.stdout, encoding="utf-8")
    built = run(kubectl, "kustomize", app)
    assert built.returncode == 0, built.stderr
    (merged,) = [d for d in yaml.safe_load_all(built.stdout) if d]
    original = yaml.safe_load((EXAMPLE_APP / "deployment.yaml").read_text(encoding="utf-8"))
    return original, merged


def test_sidecar_patch_applied_to_the_example_app_keeps_the_app_and_adds_the_gateway(
    helm: Helm, kubectl: Path, tmp_path: Path
) -> None:
    original, merged = kustomized_example(
        helm, kubectl, tmp_path, "-f", str(CI / "sidecar-values.yaml")
    )
    validate_manifest(merged)
    before, after = original["spec"]["template"], merged["spec"]["template"]
    # The application's own containers and pod settings survive untouched.
    assert after["spec"]["containers"] == before["spec"]["containers"]
    for key in ("securityContext", "automountServiceAccountToken", "terminationGracePeriodSeconds"):
        assert after["spec"][key] == before["spec"][key]
    assert after["metadata"]["labels"] == before["metadata"]["labels"]
    assert before["metadata"]["annotations"].items() <= after["metadata"]["annotations"].items()
    assert CHECKSUM in after["metadata"]["annotations"]
    assert merged["spec"]["replicas"] == original["spec"]["replicas"]
    volumes = {v["name"]: v for v in after["spec"]["volumes"]}
    assert volumes["config"] == {"name": "config", "emptyDir": {}}
    assert volumes["llm-gateway-config"]["configMap"]["name"] == FULLNAME
    assert [c["name"] for c in after["spec"]["initContainers"]] == ["extproc", "envoy"]
    # The app calls the listener the chart configured.
    app_env = {e["name"]: e.get("value") for e in after["spec"]["containers"][0]["env"]}
    port = ci_values("sidecar-values.yaml")["gateway"]["listener"]["port"]
    assert app_env["OPENAI_BASE_URL"] == f"http://127.0.0.1:{port}/v1"


def test_sidecar_patch_script_refuses_gateway_mode(helm: Helm) -> None:
    env = {**helm.env, "HELM": str(helm.binary), "PYTHON": sys.executable}
    result = run("sh", PATCH_SCRIPT, RELEASE, env=env)
    assert result.returncode != 0
    assert result.stdout == ""


# --- rollOnConfigChange ------------------------------------------------------------------------


def test_chart_restart_only_list_is_the_processors() -> None:
    listed = yaml.safe_load(
        (CHART / "files" / "restart-only-settings.yaml").read_text(encoding="utf-8")
    )
    assert listed == [path for path, _, _ in RESTART_ONLY]


def pod_annotations(helm: Helm, *extra: str) -> Json:
    found: Json = (
        deployment(by_name(template(helm, *extra)))["spec"]["template"]["metadata"].get(
            "annotations"
        )
        or {}
    )
    return found


def checksum(helm: Helm, *extra: str) -> str:
    value: str = pod_annotations(helm, *extra)[CHECKSUM]
    return value


@pytest.mark.parametrize(
    ("setting", "rolls"),
    [
        ("gateway.processor.admin_port=9191", True),
        ("gateway.governance.on_redis_failure=deny", True),
        ("gateway.telemetry.log_level=DEBUG", True),
        # Reloadable: tenants, limits, providers.
        ("gateway.tenants[0].name=team-b", False),
        ("gateway.limits.max_json_depth=32", False),
    ],
)
def test_auto_rolls_on_restart_only_changes_and_reloads_the_rest(
    helm: Helm, setting: str, rolls: bool
) -> None:
    assert chart_values()["rollOnConfigChange"] == "auto"
    base = checksum(helm)
    changed = checksum(helm, "--set", setting)
    assert (changed != base) is rolls, (base, changed)


def test_true_rolls_on_every_change_and_false_never(helm: Helm) -> None:
    on = ("--set", "rollOnConfigChange=true")
    base = checksum(helm, *on)
    assert checksum(helm, *on, "--set", "gateway.tenants[0].name=team-b") != base
    assert CHECKSUM not in pod_annotations(helm, "--set", "rollOnConfigChange=false")


# --- refused values ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        (["gateway.listener.address=127.0.0.1"], "gateway.listener.address must be 0.0.0.0"),
        (
            ["gateway.processor.admin_address=127.0.0.1"],
            "gateway.processor.admin_address must be 0.0.0.0",
        ),
        (["gateway.processor.unix_socket=/tmp/x.sock"], "must be inside /var/run/llm-gateway"),
        (["gateway.reload.xds_directory=/tmp/xds"], "gateway.reload.xds_directory must be"),
        (["terminationGracePeriodSeconds=20"], "terminationGracePeriodSeconds (20) must be"),
        (["terminationGracePeriodSeconds=36"], "shutdown_grace_seconds + 5 (40)"),
        (["mode=sidecar"], "sidecar.deploymentName is required in sidecar mode"),
        (
            ["mode=sidecar", "sidecar.deploymentName=app", "gateway.listener.address=0.0.0.0"],
            "gateway.listener.address must be 127.0.0.1 or ::1 in sidecar mode",
        ),
        (
            ["mode=sidecar", "sidecar.deploymentName=app", "autoscaling.enabled=true"],
            "autoscaling.enabled is for gateway mode",
        ),
        (
            ["mode=sidecar", "sidecar.deploymentName=app", "networkPolicy.enabled=true"],
            "networkPolicy.enabled is for gateway mode",
        ),
        (
            ["mode=sidecar", "sidecar.deploymentName=app", "serviceMonitor.enabled=true"],
            "needs sidecar.podLabels",
        ),
        (
            [
                "mode=sidecar",
                "sidecar.deploymentName=app",
                "gateway.processor.ready_requires_envoy=false",
            ],
            "ready_requires_envoy must stay true in sidecar mode",
        ),
        (["gateway.governance.backend=redis"], "no Redis is given"),
        (["gateway.cache.backend=redis"], "no Redis is given"),
        (
            ["externalRedis.url=redis://user:hunter2@redis:6379/0"],
            "externalRedis.url must not carry a password",
        ),
        (
            ["externalRedis.url=redis://redis:6379", "externalRedis.existingSecret=r"],
            "set url or existingSecret, not both",
        ),
        (
            ["externalRedis.url=redis://redis:6379", "gateway.governance.redis.url_env=X"],
            "externalRedis and gateway.governance.redis.url/url_env both name a Redis",
        ),
    ],
)
def test_chart_refuses_settings_the_pod_cannot_work_with(
    helm: Helm, settings: list[str], message: str
) -> None:
    args = [arg for setting in settings for arg in ("--set", setting)]
    stderr = refused(helm, *args)
    assert message in stderr
    assert "hunter2" not in stderr


@pytest.mark.parametrize(
    ("setting", "field"),
    [
        ("replicaCount=x", "replicaCount"),
        ("mode=mesh", "mode"),
        ("rollOnConfigChange=sometimes", "rollOnConfigChange"),
        ("autoscaling.minReplicas=0", "minReplicas"),
        ("image.pullPolicy=Sometimes", "pullPolicy"),
        ("service.port=70000", "port"),
        ("unknownSetting=1", "unknownSetting"),
        ("networkPolicy.ingresFrom=x", "ingresFrom"),
        ("externalRedis.url=http://redis", "url"),
        ("extproc.logLevel=LOUD", "logLevel"),
    ],
)
def test_values_schema_rejects_bad_values_naming_the_field(
    helm: Helm, setting: str, field: str
) -> None:
    stderr = refused(helm, "--set", setting)
    assert "values don't meet the specifications of the schema" in stderr
    assert field in stderr
