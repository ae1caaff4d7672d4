"""The Helm chart in helm/llm-gateway, proven offline: config, lint, render, Kubernetes schemas.

The gateway config in values.yaml must be one the processor accepts and Envoy can be bootstrapped
from. The chart itself is linted and rendered by the real Helm binary, and every manifest is
validated against the Kubernetes OpenAPI schemas by `kubernetes_validate` (strict: unknown
fields are errors). Helm comes from `scripts/install-helm.sh` (run by `make tools`); without it
these tests fail rather than skip, so a green run always includes the chart.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from extproc.bootstrap import render_bootstrap, render_static_bootstrap, render_static_yaml
from extproc.cli import build_parser
from extproc.config.loading import parse_config
from extproc.config.schema import GatewayConfig
from extproc.dev.stack import find_envoy_binary

Json = dict[str, Any]

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "llm-gateway"
# The Kubernetes version manifests are checked against (that of the kubectl shipped beside helm).
KUBE_VERSION = "1.33"
RELEASE = "gw"
NAMESPACE = "llm"
CONFIG_FILE = "/etc/llm-gateway/gateway.yaml"
SOCKET_DIR = "/var/run/llm-gateway"
SOCKET = f"{SOCKET_DIR}/extproc.sock"
XDS_DIR = "/var/run/llm-gateway-xds"


def chart_values() -> Json:
    values: Json = yaml.safe_load((CHART / "values.yaml").read_text(encoding="utf-8"))
    return values


def values_config() -> GatewayConfig:
    return parse_config(chart_values()["gateway"], "helm/llm-gateway/values.yaml: gateway")


# --- the gateway config in values.yaml --------------------------------------------------------


def test_values_gateway_config_is_valid() -> None:
    config = values_config()
    assert (config.listener.address, config.listener.port) == ("0.0.0.0", 8080)
    assert str(config.processor.unix_socket) == SOCKET
    # The kubelet probes the processor's admin port on the pod IP.
    assert config.processor.admin_address == "0.0.0.0"
    assert config.envoy_admin.address == "127.0.0.1"
    assert config.auth.enabled
    assert str(config.reload.xds_directory) == XDS_DIR


def test_values_gateway_config_renders_an_envoy_config_envoy_accepts(tmp_path: Path) -> None:
    config = values_config()
    bootstrap = render_bootstrap(config)
    (extproc,) = bootstrap["static_resources"]["clusters"]
    endpoint = extproc["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["pipe"]["path"] == SOCKET
    for source in ("lds_config", "cds_config"):
        watched = bootstrap["dynamic_resources"][source]["path_config_source"]
        assert watched["watched_directory"] == {"path": XDS_DIR}
    static = render_static_bootstrap(config)
    listener = static["static_resources"]["listeners"][0]
    assert listener["address"]["socket_address"] == {"address": "0.0.0.0", "port_value": 8080}

    path = tmp_path / "envoy.yaml"
    path.write_text(render_static_yaml(config), encoding="utf-8")
    result = subprocess.run(
        [str(find_envoy_binary()), "--mode", "validate", "-c", str(path), "-l", "warn"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- helm lint / template ---------------------------------------------------------------------


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
        return subprocess.run(
            [str(self.binary), *args],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            cwd=REPO,
            env=self.env,
        )


@pytest.fixture(scope="module")
def helm(tmp_path_factory: pytest.TempPathFactory) -> Helm:
    override = os.environ.get("HELM_BIN")
    binary = Path(override) if override else REPO / ".tools" / "helm"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        pytest.fail(
            f"Helm binary not found at {binary}: run scripts/install-helm.sh (make tools), "
            "or set HELM_BIN to a helm executable"
        )
    return Helm(binary, tmp_path_factory.mktemp("helm-home"))


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


def by_kind(docs: list[Json]) -> dict[str, Json]:
    kinds = [doc["kind"] for doc in docs]
    assert len(kinds) == len(set(kinds)), kinds
    return {doc["kind"]: doc for doc in docs}


@pytest.fixture(scope="module")
def rendered(helm: Helm) -> dict[str, Json]:
    return by_kind(template(helm))


def configmap_config(configmap: Json) -> GatewayConfig:
    text = configmap["data"]["gateway.yaml"]
    return parse_config(yaml.safe_load(text), "rendered ConfigMap gateway.yaml")


def test_helm_lint_is_clean(helm: Helm) -> None:
    result = helm.run("lint", "--strict", "--kube-version", f"{KUBE_VERSION}.0", str(CHART))
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 chart(s) failed" in result.stdout


def test_every_rendered_manifest_is_valid_kubernetes(rendered: dict[str, Json]) -> None:
    assert set(rendered) == {"ConfigMap", "Deployment", "Service"}
    for kind, doc in rendered.items():
        try:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{kind} is not valid Kubernetes {KUBE_VERSION}: {exc.message}")


def test_configmap_carries_the_values_gateway_config(rendered: dict[str, Json]) -> None:
    assert configmap_config(rendered["ConfigMap"]) == values_config()


def pod_spec(rendered: dict[str, Json]) -> Json:
    spec: Json = rendered["Deployment"]["spec"]["template"]["spec"]
    return spec


def containers(rendered: dict[str, Json]) -> dict[str, Json]:
    return {c["name"]: c for c in pod_spec(rendered)["containers"]}


def mounts(container: Json) -> dict[str, str]:
    return {m["mountPath"]: m["name"] for m in container["volumeMounts"]}


def test_one_pod_two_containers_sharing_config_socket_and_xds(rendered: dict[str, Json]) -> None:
    spec = pod_spec(rendered)
    assert rendered["Deployment"]["spec"]["replicas"] == chart_values()["replicaCount"]
    found = containers(rendered)
    assert list(found) == ["extproc", "envoy"]
    assert found["extproc"]["image"] == found["envoy"]["image"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["config"]["configMap"]["name"] == rendered["ConfigMap"]["metadata"]["name"]
    assert "emptyDir" in volumes["socket"]
    assert "emptyDir" in volumes["xds"]
    tmp_volumes = set()
    for container in found.values():
        paths = mounts(container)
        assert paths["/etc/llm-gateway"] == "config"
        assert paths[SOCKET_DIR] == "socket"
        assert paths[XDS_DIR] == "xds"
        assert "emptyDir" in volumes[paths["/tmp"]]
        tmp_volumes.add(paths["/tmp"])
    assert len(tmp_volumes) == 2


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
    service = rendered["Service"]["spec"]
    assert service["ports"] == [
        {"name": "http", "port": 8080, "targetPort": "http", "protocol": "TCP"}
    ]
    pod_labels = rendered["Deployment"]["spec"]["template"]["metadata"]["labels"]
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
    grace = values_config().processor.shutdown_grace_seconds
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
    grace = values_config().processor.shutdown_grace_seconds
    drain = chart_values()["drainDelaySeconds"]
    # Envoy: fail health checks, accept for drainDelaySeconds, close, wait for requests in
    # flight up to the config's shutdown_grace_seconds (the same file the processor reads).
    envoy = pre_stop(found["envoy"])
    assert (envoy.command, envoy.config, envoy.delay, envoy.grace) == (
        "drain",
        CONFIG_FILE,
        drain,
        None,
    )
    # The processor keeps serving until Envoy has exited, for longer than Envoy's drain can
    # take, and the pod's grace period leaves time for that wait and the processor's exit.
    processor = pre_stop(found["extproc"])
    assert (processor.command, processor.config) == ("wait-envoy-exit", CONFIG_FILE)
    assert processor.timeout > drain + grace
    assert pod_spec(rendered)["terminationGracePeriodSeconds"] > processor.timeout


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
    docs = by_kind(template(helm, "--values", str(values_file)))
    for doc in docs.values():
        kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)
    config = configmap_config(docs["ConfigMap"])
    assert config.providers[0].api_version == "2024-10-21"
    assert config.limits.max_body_bytes == 64 * 1024 * 1024
    assert config.limits.default_timeout_seconds == 30.5
    assert [t.model for t in config.models[1].targets] == ["meta-llama/Llama-3.1-8B", "012"]
    assert config.models[0].targets[0].model == "1e3"
    assert pod_spec(docs)["terminationGracePeriodSeconds"] == 60
    render_bootstrap(config)


@pytest.mark.parametrize(
    ("setting", "message"),
    [
        ("gateway.listener.address=127.0.0.1", "gateway.listener.address must be 0.0.0.0"),
        (
            "gateway.processor.admin_address=127.0.0.1",
            "gateway.processor.admin_address must be 0.0.0.0",
        ),
        ("gateway.processor.unix_socket=/tmp/x.sock", "must be inside /var/run/llm-gateway"),
        ("gateway.reload.xds_directory=/tmp/xds", "gateway.reload.xds_directory must be"),
        ("terminationGracePeriodSeconds=20", "terminationGracePeriodSeconds (20) must be"),
        ("terminationGracePeriodSeconds=36", "shutdown_grace_seconds + 5 (40)"),
    ],
)
def test_chart_refuses_settings_the_pod_cannot_work_with(
    helm: Helm, setting: str, message: str
) -> None:
    result = helm.run("template", RELEASE, str(CHART), "--set", setting)
    assert result.returncode != 0
    assert message in result.stderr


def test_pods_roll_on_a_config_change_unless_they_reload_it_in_place(helm: Helm) -> None:
    def annotations(*extra: str) -> Json:
        deployment = by_kind(template(helm, *extra))["Deployment"]
        found: Json = deployment["spec"]["template"]["metadata"].get("annotations") or {}
        return found

    assert "checksum/config" in annotations()
    assert "checksum/config" not in annotations("--set", "rollOnConfigChange=false")
