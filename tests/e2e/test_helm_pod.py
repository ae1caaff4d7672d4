"""End to end: the Helm chart's rendered pods, both modes, run for real (tests/e2e/pod.py).

`helm template` renders the chart with `helm-pod-values.yaml` (providers pointing at two fake
providers this test starts, one OpenAI-shaped and one Anthropic, their keys in a Secret the
test supplies), and the Deployment's pod spec runs as written: each container's command, args,
environment and files come from the manifests, none is retyped here. OpenAI traffic through
the listener then reaches the fakes with the Secret's keys, and the pod stops as the kubelet
stops it, every container exiting 0 before the grace period ends. In sidecar mode the pod is the
example application's Deployment (helm/examples/sidecar-app) with the chart's rendered patch
applied by `kubectl kustomize`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from extproc.decisions.auth import hash_key
from extproc.dev.fakes import FakeProviderServer
from extproc.dev.stack import free_ports
from tests.e2e.pod import Pod, helm_template, pod_template_spec

pytestmark = pytest.mark.e2e

VALUES_FILE = Path(__file__).with_name("helm-pod-values.yaml")
VALUES: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))
CLIENT_KEY = "sk-pod-test-client"  # its SHA-256 is the tenant's digest in the values file
SECRET = {"OPENAI_API_KEY": "sk-pod-openai-upstream", "ANTHROPIC_API_KEY": "sk-ant-pod-upstream"}
# A second tenant's key, whose digest reaches the pod only through the clientKeys Secret.
SECRET_TENANT_KEY = "sk-pod-test-from-secret"
CLIENT_KEYS = {"team-b": f"# team b\n{hash_key(SECRET_TENANT_KEY)}\n"}
OPENAI_MODEL, ANTHROPIC_MODEL = (m["name"] for m in VALUES["gateway"]["models"])
REPO = Path(__file__).parents[2]
EXAMPLE_APP = REPO / "helm" / "examples" / "sidecar-app"
EXAMPLE_DEPLOYMENT = "demo-app"  # the example application's Deployment (its deployment.yaml)


@dataclass
class RunningPod:
    pod: Pod
    manifests: list[dict[str, Any]]
    openai_fake: FakeProviderServer
    anthropic_fake: FakeProviderServer
    base_url: str

    def client(self, key: str = CLIENT_KEY) -> openai.OpenAI:
        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=30)

    def clear(self) -> None:
        self.openai_fake.clear()
        self.anthropic_fake.clear()


def container_port(manifests: list[dict[str, Any]], name: str) -> int:
    """The one container port called `name` in the rendered pod spec."""
    spec = pod_template_spec(manifests)
    ports = [
        p["containerPort"]
        for c in [*spec.get("initContainers", []), *spec["containers"]]
        for p in c.get("ports", [])
        if p.get("name") == name
    ]
    (port,) = ports
    return int(port)


def render(
    work: Path,
    listener: int,
    admin: int,
    envoy_admin: int,
    openai_fake: FakeProviderServer,
    anthropic_fake: FakeProviderServer,
    *extra: str,
) -> list[dict[str, Any]]:
    """The chart rendered with the values file, the free ports, the fakes' URLs and `extra`."""
    return helm_template(
        work / "helm-home",
        "gw",
        "-f",
        str(VALUES_FILE),
        "--set",
        f"gateway.listener.port={listener}",
        "--set",
        f"gateway.processor.admin_port={admin}",
        "--set",
        f"gateway.envoy_admin.port={envoy_admin}",
        "--set-string",
        f"gateway.providers[0].base_url={openai_fake.base_url}/v1",
        "--set-string",
        f"gateway.providers[1].base_url={anthropic_fake.base_url}/v1",
        *extra,
        namespace="llm",
    )


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningPod]:
    with (
        FakeProviderServer() as openai_fake,
        FakeProviderServer() as anthropic_fake,
    ):
        listener, admin, envoy_admin = free_ports(3)
        work = tmp_path_factory.mktemp("helm-pod")
        manifests = render(work, listener, admin, envoy_admin, openai_fake, anthropic_fake)
        secret_name = VALUES["credentials"]["existingSecret"]
        pod = Pod(
            pod_template_spec(manifests),
            manifests,
            work / "pod",
            secrets={secret_name: SECRET, VALUES["clientKeys"]["existingSecret"]: CLIENT_KEYS},
            name="gw-llm-gateway-0",
            namespace="llm",
        )
        port = container_port(manifests, "http")
        assert port == listener  # the chart took the listener port from the gateway config
        with pod:
            yield RunningPod(
                pod, manifests, openai_fake, anthropic_fake, f"http://127.0.0.1:{port}"
            )


def test_the_pod_runs_the_rendered_containers_as_the_rendered_user(running: RunningPod) -> None:
    spec = pod_template_spec(running.manifests)
    assert [c.name for c in running.pod.containers] == [c["name"] for c in spec["containers"]]
    uid = spec["securityContext"]["runAsUser"]
    for container in running.pod.containers:
        who = running.pod.exec_in(container, ["id", "-u"], timeout=10)
        assert (who.exit_code, who.output.strip()) == (0, str(uid))
        # readOnlyRootFilesystem: only the mounted volumes are writable.
        assert running.pod.exec_in(container, ["touch", "/etc/x"], timeout=10).exit_code != 0
        assert running.pod.exec_in(container, ["touch", "/tmp/x"], timeout=10).exit_code == 0


def test_chat_completion_reaches_the_openai_provider_with_the_secrets_key(
    running: RunningPod,
) -> None:
    running.clear()
    reply = running.client().chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "hello pod"}]
    )
    assert reply.choices[0].message.content == "echo: hello pod"
    (seen,) = running.openai_fake.requests
    assert seen.path == "/v1/chat/completions"
    assert seen.header("authorization") == f"Bearer {SECRET['OPENAI_API_KEY']}"
    assert CLIENT_KEY not in repr(seen.headers)


def test_stream(running: RunningPod) -> None:
    running.clear()
    chunks = list(
        running.client().chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "stream it"}], stream=True
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: stream it"
    (seen,) = running.openai_fake.requests
    assert seen.json["stream"] is True


def test_translated_provider(running: RunningPod) -> None:
    running.clear()
    reply = running.client().chat.completions.create(
        model=ANTHROPIC_MODEL, messages=[{"role": "user", "content": "hello claude"}]
    )
    assert reply.choices[0].message.content == "echo: hello claude"
    (seen,) = running.anthropic_fake.requests
    assert seen.path == "/v1/messages"
    assert seen.header("x-api-key") == SECRET["ANTHROPIC_API_KEY"]
    assert seen.header("authorization") is None
    assert running.openai_fake.requests == []


def test_models_lists_the_rendered_configs_models(running: RunningPod) -> None:
    (configmap,) = [m for m in running.manifests if m["kind"] == "ConfigMap"]
    config = yaml.safe_load(configmap["data"]["gateway.yaml"])
    listed = {model.id for model in running.client().models.list()}
    assert listed == {m["name"] for m in config["models"]}


def test_a_key_from_the_client_keys_secret_is_accepted(running: RunningPod) -> None:
    """The tenant's digest is in no manifest: only in the Secret the chart mounts."""
    assert hash_key(SECRET_TENANT_KEY) not in yaml.safe_dump(running.manifests)
    running.clear()
    reply = running.client(SECRET_TENANT_KEY).chat.completions.create(
        model=OPENAI_MODEL, messages=[{"role": "user", "content": "key from a secret"}]
    )
    assert reply.choices[0].message.content == "echo: key from a secret"
    assert len(running.openai_fake.requests) == 1


def test_a_wrong_key_is_refused(running: RunningPod) -> None:
    running.clear()
    with pytest.raises(openai.AuthenticationError) as refused:
        running.client("sk-not-a-tenant").chat.completions.create(
            model=OPENAI_MODEL, messages=[{"role": "user", "content": "hi"}]
        )
    assert refused.value.status_code == 401
    assert running.openai_fake.requests == []


# Last: it stops the module's pod.
def test_the_pod_stops_like_the_kubelet_stops_it(running: RunningPod) -> None:
    exits = running.pod.stop()
    spec = pod_template_spec(running.manifests)
    assert set(exits) == {c["name"] for c in spec["containers"]}, running.pod.logs()
    for name, end in exits.items():
        assert end.pre_stop is not None, name  # both containers have a preStop hook
        assert end.pre_stop.exit_code == 0, (name, end.pre_stop.output)
        assert not end.killed, f"{name} needed SIGKILL\n{running.pod.logs()}"
        assert end.exit_code == 0, f"{name} exited {end.exit_code}\n{running.pod.logs()}"


def kubectl_binary() -> Path:
    """`$KUBECTL_BIN`, else `.tools/kubectl` (from `make tools`); fails when neither exists."""
    override = os.environ.get("KUBECTL_BIN")
    binary = Path(override) if override else REPO / ".tools" / "kubectl"
    assert binary.is_file() and os.access(binary, os.X_OK), (
        f"kubectl not found at {binary}: run scripts/install-helm.sh (make tools)"
    )
    return binary


def test_sidecar_mode_the_charts_patch_on_the_example_app_runs_and_serves(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """Sidecar mode end to end: the chart renders its patch (mode: sidecar), `kubectl kustomize`
    applies it to the example application (helm/examples/sidecar-app), and the merged
    Deployment's pod runs: the gateway's native sidecars start in order, the application's own
    container is skipped (the test plays the application, calling loopback), traffic reaches
    the fake with the Secret's key, and the sidecars stop last, in reverse order, exiting 0."""
    with FakeProviderServer() as openai_fake, FakeProviderServer() as anthropic_fake:
        listener, admin, envoy_admin = free_ports(3)
        work = tmp_path_factory.mktemp("helm-sidecar-pod")
        manifests = render(
            work,
            listener,
            admin,
            envoy_admin,
            openai_fake,
            anthropic_fake,
            "--set",
            "mode=sidecar",
            "--set",
            f"sidecar.deploymentName={EXAMPLE_DEPLOYMENT}",
        )
        kinds = sorted(m["kind"] for m in manifests)
        assert "Deployment" not in kinds and "Service" not in kinds, kinds
        (patch_map,) = [m for m in manifests if m["metadata"]["name"].endswith("-sidecar-patch")]
        app = work / "sidecar-app"
        shutil.copytree(EXAMPLE_APP, app)
        (app / "patch.yaml").write_text(patch_map["data"]["patch.yaml"], encoding="utf-8")
        built = subprocess.run(
            [str(kubectl_binary()), "kustomize", str(app)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert built.returncode == 0, built.stderr
        (merged,) = [d for d in yaml.safe_load_all(built.stdout) if d]
        assert merged["metadata"]["name"] == EXAMPLE_DEPLOYMENT
        spec = merged["spec"]["template"]["spec"]
        app_containers = [c["name"] for c in spec["containers"]]
        sidecars = [c["name"] for c in spec["initContainers"]]
        assert sidecars == ["extproc", "envoy"]  # the processor first: Envoy is stopped first
        pod = Pod(
            spec,
            manifests,
            work / "pod",
            secrets={
                VALUES["credentials"]["existingSecret"]: SECRET,
                VALUES["clientKeys"]["existingSecret"]: CLIENT_KEYS,
            },
            skip=app_containers,
            name=f"{EXAMPLE_DEPLOYMENT}-0",
            namespace="llm",
        )
        with pod:
            assert [c.name for c in pod.init] == sidecars
            assert pod.containers == []
            # The sidecar's listener is on loopback only (the chart's sidecar-mode setting).
            (configmap,) = [m for m in manifests if "gateway.yaml" in m.get("data", {})]
            config = yaml.safe_load(configmap["data"]["gateway.yaml"])
            assert (config["listener"]["address"], config["listener"]["port"]) == (
                "127.0.0.1",
                listener,
            )
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{listener}/v1", api_key=CLIENT_KEY, max_retries=0
            )
            with client:
                reply = client.chat.completions.create(
                    model=OPENAI_MODEL, messages=[{"role": "user", "content": "as a sidecar"}]
                )
                stream = client.chat.completions.create(
                    model=ANTHROPIC_MODEL,
                    messages=[{"role": "user", "content": "translated"}],
                    stream=True,
                )
                text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            assert reply.choices[0].message.content == "echo: as a sidecar"
            assert text == "echo: translated"
            (seen,) = openai_fake.requests
            assert seen.header("authorization") == f"Bearer {SECRET['OPENAI_API_KEY']}"
            (seen,) = anthropic_fake.requests
            assert seen.header("x-api-key") == SECRET["ANTHROPIC_API_KEY"]
            exits = pod.stop()
        assert sorted(exits) == sorted(sidecars)
        assert pod.stop_order == list(reversed(sidecars))
        for name, end in exits.items():
            assert end.pre_stop is not None and end.pre_stop.exit_code == 0, (name, end)
            assert (end.exit_code, end.killed) == (0, False), f"{name}: {end}\n{pod.logs()}"
