"""End to end: the Helm chart's rendered gateway-mode pod, run for real (tests/e2e/pod.py).

`helm template` renders the chart with `helm-pod-values.yaml` (providers pointing at two fake
providers this test starts, one OpenAI-shaped and one Anthropic, their keys in a Secret the
test supplies), and the Deployment's pod spec runs as written: each container's command, args,
environment and files come from the manifests, none is retyped here. OpenAI traffic through
the listener then reaches the fakes with the Secret's keys, and the pod stops as the kubelet
stops it, every container exiting 0 before the grace period ends.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
import yaml

from extproc.dev.fakes import FakeProviderServer
from extproc.dev.stack import free_ports
from tests.e2e.pod import Pod, helm_template, pod_template_spec

pytestmark = pytest.mark.e2e

VALUES_FILE = Path(__file__).with_name("helm-pod-values.yaml")
VALUES: dict[str, Any] = yaml.safe_load(VALUES_FILE.read_text(encoding="utf-8"))
CLIENT_KEY = "sk-pod-test-client"  # its SHA-256 is the tenant's digest in the values file
SECRET = {"OPENAI_API_KEY": "sk-pod-openai-upstream", "ANTHROPIC_API_KEY": "sk-ant-pod-upstream"}
OPENAI_MODEL, ANTHROPIC_MODEL = (m["name"] for m in VALUES["gateway"]["models"])
# An application container beside the gateway in a sidecar-shaped pod: never run (skipped).
APP_CONTAINER = {"name": "app", "image": "registry.example.com/app:1"}


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
) -> list[dict[str, Any]]:
    """The chart rendered with the values file, the free ports and the fakes' URLs."""
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
            secrets={secret_name: SECRET},
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


def test_a_sidecar_shaped_pod_runs_on_the_same_harness(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    """The chart's two containers as native sidecars of an application's pod (init containers
    with restartPolicy Always, the app's own container skipped): the harness starts them in
    order, serves traffic, and stops the sidecars last, in reverse order, all exiting 0."""
    with FakeProviderServer() as openai_fake, FakeProviderServer() as anthropic_fake:
        listener, admin, envoy_admin = free_ports(3)
        work = tmp_path_factory.mktemp("helm-sidecar-pod")
        manifests = render(work, listener, admin, envoy_admin, openai_fake, anthropic_fake)
        gateway = copy.deepcopy(pod_template_spec(manifests))
        sidecars = [{**c, "restartPolicy": "Always"} for c in gateway.pop("containers")]
        spec = {**gateway, "initContainers": sidecars, "containers": [APP_CONTAINER]}
        pod = Pod(
            spec,
            manifests,
            work / "pod",
            secrets={VALUES["credentials"]["existingSecret"]: SECRET},
            skip=[APP_CONTAINER["name"]],
        )
        with pod:
            assert [c.name for c in pod.init] == [c["name"] for c in sidecars]
            assert pod.containers == []
            client = openai.OpenAI(
                base_url=f"http://127.0.0.1:{listener}/v1", api_key=CLIENT_KEY, max_retries=0
            )
            with client:
                reply = client.chat.completions.create(
                    model=OPENAI_MODEL, messages=[{"role": "user", "content": "as a sidecar"}]
                )
            assert reply.choices[0].message.content == "echo: as a sidecar"
            exits = pod.stop()
        assert sorted(exits) == sorted(c["name"] for c in sidecars)
        assert pod.stop_order == [c["name"] for c in reversed(sidecars)]
        for name, end in exits.items():
            assert end.pre_stop is not None and end.pre_stop.exit_code == 0, (name, end)
            assert (end.exit_code, end.killed) == (0, False), f"{name}: {end}\n{pod.logs()}"
