"""Run a rendered Kubernetes pod spec on this machine, as close to the kubelet as one host allows.

`Pod(spec, objects, workdir, secrets=...)` takes a pod spec read from rendered manifests (e.g. a
Deployment's `spec.template.spec`, see `pod_template_spec`) and runs each of its containers with
exactly the spec's `command` + `args` (`$(VAR)` expanded as Kubernetes does), its environment and
its files. The image is replaced by this machine's root filesystem, read-only, with this venv's
`bin/` (which has `extproc` and `envoy`) first on PATH: the one thing of the test process's
environment a container gets (the venv, its base interpreter and this checkout are reachable
even where they sit in a directory only root may enter). What it reproduces of a pod:

- environment: `env` values, `valueFrom` (`secretKeyRef`, `configMapKeyRef`, a few `fieldRef`s),
  `envFrom` (`secretRef`/`configMapRef`, `prefix`, `optional`), from the ConfigMaps among
  `objects` and from the Secrets the test supplies (the chart renders none); PATH, HOSTNAME
  (the pod's name) and HOME=/ as a container runtime sets them; nothing else;
- files: configMap and secret volumes written as the kubelet does (`..data` symlinked to a
  timestamped directory, `items`, `defaultMode`/`mode`), emptyDir volumes as directories shared
  by every container that mounts them, `subPath`; each bound onto its mountPath in a bubblewrap
  (`bwrap`) sandbox, read-only where `readOnly`; the rest of the root filesystem read-only when
  `readOnlyRootFilesystem` (else only new top-level directories are writable: the host's own
  files never are); a fresh `/dev`, `/proc`, `/dev/shm`, and an empty `/tmp` unless mounted;
- identity: `runAsUser`/`runAsGroup` (container over pod; 0 when unset), `fsGroup` and
  `supplementalGroups` as supplementary groups (and as the group of emptyDirs and volume files),
  `runAsNonRoot` refusing uid 0, the capability bounding set (the runtime's default set plus
  `capabilities.add` minus `drop`, `ALL` included) and no_new_privs, all set with `setpriv`;
- namespaces: each container its own PID namespace (its command is PID 1, so signals it has no
  handler for are ignored, as in a container), IPC and UTS (hostname: the pod's name)
  namespaces; the network is the host's, which every container shares (the pod IP is
  127.0.0.1 here);
- start: init containers in order (run to completion), native sidecars (init containers with
  `restartPolicy: Always`) started in order, each after the previous one's startupProbe passed,
  then the regular containers; `postStart` hooks; `Pod.start` returns once every container's
  startupProbe and readinessProbe pass (`httpGet` on the pod IP with the port by name or
  number, `tcpSocket`, `exec` run inside the container's namespaces with `nsenter`); a container
  that exits meanwhile fails the start with its output;
- stop (`Pod.stop`): as the kubelet deletes a pod: the regular containers in parallel, each its
  `preStop` hook (exec inside the container, or httpGet), then SIGTERM; then the native sidecars
  one by one in reverse order; SIGKILL for any container still running when
  `terminationGracePeriodSeconds` has run out (at least 2 s after its preStop hook returned).

Not reproduced: the image itself (its files, user, entrypoint: a container without `command`
cannot run here), resource requests/limits and `sizeLimit` (no cgroups), seccomp and AppArmor
profiles, `medium: Memory` (a plain directory), liveness probes and restarts (a container that
exits is an error), probe periods (probes run every 0.1 s after `initialDelaySeconds`), the
kubelet's /etc/hosts and /etc/resolv.conf (the host's are seen), Service environment variables,
service-account tokens, and volume types other than configMap, secret and emptyDir (an error).
Containers named in `skip` (e.g. a sidecar pod's application) are not run at all.
"""

from __future__ import annotations

import base64
import contextlib
import http.client
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

import yaml

Json = dict[str, Any]

REPO = Path(__file__).parents[2]
CHART = REPO / "helm" / "llm-gateway"
POD_IP = "127.0.0.1"
# The PATH of the "image": this venv's bin (extproc, envoy) first, then the system's.
IMAGE_PATH = f"{Path(sys.executable).parent}:/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"
# What the "image" needs of this machine beyond the usual system directories: the venv, the
# interpreter it was made from and this checkout (an editable install).
IMAGE_PATHS = frozenset(
    os.path.realpath(p) for p in (sys.prefix, sys.base_prefix, REPO) if os.path.isdir(p)
)
# The capabilities a container runtime (containerd, CRI-O) grants by default.
DEFAULT_CAPABILITIES = (
    *("chown", "dac_override", "fowner", "fsetid", "kill", "setgid", "setuid", "setpcap"),
    *("net_bind_service", "net_raw", "sys_chroot", "mknod", "audit_write", "setfcap"),
)
# The kubelet gives a container at least this long after its preStop hook.
MINIMUM_GRACE_SECONDS = 2.0
PROBE_INTERVAL_SECONDS = 0.1


class PodError(RuntimeError):
    """The pod cannot run as specified (a missing Secret, an unsupported field, a crash)."""


# --- rendering ---------------------------------------------------------------------------------


def helm_binary() -> Path:
    """`$HELM_BIN`, else `.tools/helm` (installed by `make tools`); fails when neither exists."""
    override = os.environ.get("HELM_BIN")
    binary = Path(override) if override else REPO / ".tools" / "helm"
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        raise PodError(
            f"Helm binary not found at {binary}: run scripts/install-helm.sh (make tools), "
            "or set HELM_BIN to a helm executable"
        )
    return binary


def helm_template(
    home: Path,
    release: str,
    *args: str,
    chart: Path = CHART,
    namespace: str = "default",
) -> list[Json]:
    """The manifests `helm template RELEASE CHART --namespace NS ARGS...` renders (Helm's state
    directories in `home`)."""
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HELM_CONFIG_HOME": str(home / "config"),
        "HELM_CACHE_HOME": str(home / "cache"),
        "HELM_DATA_HOME": str(home / "data"),
    }
    argv = [str(helm_binary()), "template", release, str(chart), "--namespace", namespace, *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120, check=False, env=env)
    if result.returncode != 0:
        raise PodError(f"helm template failed ({result.returncode}):\n{result.stderr}")
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


def pod_template_spec(manifests: Sequence[Json], kind: str = "Deployment") -> Json:
    """The pod spec (`spec.template.spec`) of the one manifest of `kind`."""
    found = [m for m in manifests if m.get("kind") == kind]
    if len(found) != 1:
        raise PodError(f"expected one {kind} among the manifests, found {len(found)}")
    spec: Json = found[0]["spec"]["template"]["spec"]
    return spec


# --- tools ---------------------------------------------------------------------------------------


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise PodError(
            f"{name} not found on PATH: run scripts/install-bwrap.sh (make tools) to install "
            "bubblewrap and util-linux"
        )
    return found


# --- environment ---------------------------------------------------------------------------------


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: defined variables replaced, `$$` an escaped `$`,
    anything else (an undefined `$(VAR)` included) left as written."""
    out: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == "$" and i + 1 < len(text):
            nxt = text[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                end = text.find(")", i + 2)
                if end != -1:
                    name = text[i + 2 : end]
                    out.append(env[name] if name in env else text[i : end + 1])
                    i = end + 1
                    continue
        out.append(char)
        i += 1
    return "".join(out)


@dataclass
class _Sources:
    """The ConfigMaps (rendered) and Secrets (supplied) a pod's containers read."""

    config_maps: dict[str, dict[str, bytes]]
    secrets: dict[str, dict[str, bytes]]

    @classmethod
    def of(cls, objects: Sequence[Json], secrets: Mapping[str, Mapping[str, str]]) -> _Sources:
        config_maps: dict[str, dict[str, bytes]] = {}
        for obj in objects:
            if obj.get("kind") == "ConfigMap":
                data = {k: str(v).encode() for k, v in (obj.get("data") or {}).items()}
                for key, value in (obj.get("binaryData") or {}).items():
                    data[key] = base64.b64decode(value)
                config_maps[obj["metadata"]["name"]] = data
        supplied = {name: {k: v.encode() for k, v in d.items()} for name, d in secrets.items()}
        return cls(config_maps, supplied)

    def lookup(self, kind: str, name: str, optional: bool) -> dict[str, bytes] | None:
        table = self.config_maps if kind == "configMap" else self.secrets
        if name in table:
            return table[name]
        if optional:
            return None
        raise PodError(f"{kind} {name!r} not found (and not optional)")

    def key(self, kind: str, ref: Json) -> str | None:
        data = self.lookup(kind, ref["name"], bool(ref.get("optional")))
        if data is None:
            return None
        if ref["key"] in data:
            return data[ref["key"]].decode()
        if ref.get("optional"):
            return None
        raise PodError(f"{kind} {ref['name']!r} has no key {ref['key']!r}")


# --- volumes -------------------------------------------------------------------------------------


def _write_atomic_volume(
    directory: Path, files: Mapping[str, tuple[bytes, int]], gid: int | None
) -> None:
    """Files as the kubelet's atomic writer lays them out: `..data` -> a timestamped directory
    holding them, and a symlink per top-level name into `..data`."""
    stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000000", time.gmtime())
    payload = directory / stamp
    payload.mkdir(parents=True)
    for relative, (content, mode) in files.items():
        target = payload / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        target.chmod(mode)
        if gid is not None:
            os.chown(target, 0, gid)
    (directory / "..data").symlink_to(stamp)
    for top in sorted({Path(relative).parts[0] for relative in files}):
        (directory / top).symlink_to(f"..data/{top}")
    for path in (directory, payload):
        path.chmod(0o755 if gid is None else 0o2755)
        if gid is not None:
            os.chown(path, 0, gid)


def _projected_files(
    data: Mapping[str, bytes], volume: Json, what: str
) -> dict[str, tuple[bytes, int]]:
    default_mode = int(volume.get("defaultMode", 0o644))
    items = volume.get("items")
    if not items:
        return {key: (value, default_mode) for key, value in data.items()}
    files: dict[str, tuple[bytes, int]] = {}
    for item in items:
        if item["key"] not in data:
            if volume.get("optional"):
                continue
            raise PodError(f"{what} has no key {item['key']!r} (volume items)")
        files[item["path"]] = (data[item["key"]], int(item.get("mode", default_mode)))
    return files


# --- containers ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class HookResult:
    """How a lifecycle hook or exec probe ended: its exit code (None: timed out) and output."""

    exit_code: int | None
    output: str


@dataclass(frozen=True)
class ContainerExit:
    """How a container ended: its exit code, whether SIGKILL was needed, its preStop hook."""

    name: str
    exit_code: int | None
    killed: bool
    pre_stop: HookResult | None


@dataclass
class _Container:
    name: str
    spec: Json
    sidecar: bool
    log: Path
    env: dict[str, str] = field(default_factory=dict)
    bwrap: list[str] = field(default_factory=list)
    identity: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    pid: int | None = None  # the command's PID (1 in its namespace) as this host sees it
    started_at: float = 0.0
    exit: ContainerExit | None = None

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self, tail: int = 6000) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return text[-tail:]


class Pod:
    """A pod spec's containers running on this machine (see the module docstring).

    `objects` are the rendered manifests (their ConfigMaps are used), `secrets` maps a Secret's
    name to its data, `skip` names containers not to run. A context manager: leaving the block
    stops the pod (if `stop()` was not called).
    """

    def __init__(
        self,
        spec: Json,
        objects: Sequence[Json],
        workdir: Path,
        *,
        secrets: Mapping[str, Mapping[str, str]] | None = None,
        skip: Collection[str] = (),
        name: str = "pod-0",
        namespace: str = "default",
        ready_timeout: float = 60,
    ) -> None:
        self.spec = spec
        self.workdir = workdir
        self.name = name
        self.namespace = namespace
        self.ready_timeout = ready_timeout
        self._sources = _Sources.of(objects, secrets or {})
        self._bwrap, self._setpriv, self._nsenter = (
            _tool("bwrap"),
            _tool("setpriv"),
            _tool("nsenter"),
        )
        self.grace_seconds = float(spec.get("terminationGracePeriodSeconds", 30))
        self._volumes: dict[str, Path] = {}
        self.init: list[_Container] = []
        self.containers: list[_Container] = []
        for entry in spec.get("initContainers") or []:
            if entry["name"] not in skip:
                sidecar = entry.get("restartPolicy") == "Always"
                self.init.append(self._container(entry, sidecar))
        for entry in spec.get("containers") or []:
            if entry["name"] not in skip:
                self.containers.append(self._container(entry, False))
        unknown = set(skip) - {
            c["name"] for c in [*(spec.get("initContainers") or []), *spec["containers"]]
        }
        if unknown:
            raise PodError(f"skip names no container of the pod: {sorted(unknown)}")
        self.stopped = False
        self.stop_order: list[str] = []  # the containers in the order their stop began

    # --- set-up ----------------------------------------------------------------------------

    def _container(self, spec: Json, sidecar: bool) -> _Container:
        if not spec.get("command"):
            raise PodError(
                f"container {spec['name']!r} has no command: the image's entrypoint cannot be "
                "reproduced here (skip the container)"
            )
        logs = self.workdir / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        container = _Container(spec["name"], spec, sidecar, logs / f"{spec['name']}.log")
        container.env = self._environment(spec)
        container.identity = self._identity(spec)
        container.bwrap = self._sandbox(spec)
        return container

    def _environment(self, spec: Json) -> dict[str, str]:
        env = {"PATH": IMAGE_PATH, "HOSTNAME": self.name, "HOME": "/"}
        for source in spec.get("envFrom") or []:
            prefix = source.get("prefix", "")
            for kind in ("configMap", "secret"):
                ref = source.get(f"{kind}Ref")
                if ref is not None:
                    data = self._sources.lookup(kind, ref["name"], bool(ref.get("optional")))
                    for key, raw in (data or {}).items():
                        env[prefix + key] = raw.decode()
        for var in spec.get("env") or []:
            value = self._env_value(var, env)
            if value is not None:
                env[var["name"]] = value
        return env

    def _env_value(self, var: Json, env: Mapping[str, str]) -> str | None:
        if "valueFrom" not in var:
            return expand(str(var.get("value", "")), env)
        source = var["valueFrom"]
        if "secretKeyRef" in source:
            return self._sources.key("secret", source["secretKeyRef"])
        if "configMapKeyRef" in source:
            return self._sources.key("configMap", source["configMapKeyRef"])
        if "fieldRef" in source:
            fields: dict[str, str] = {
                "metadata.name": self.name,
                "metadata.namespace": self.namespace,
                "status.podIP": POD_IP,
                "status.hostIP": POD_IP,
                "spec.nodeName": socket.gethostname(),
                "spec.serviceAccountName": str(self.spec.get("serviceAccountName", "default")),
            }
            path = source["fieldRef"]["fieldPath"]
            if path not in fields:
                raise PodError(f"env {var['name']}: fieldRef {path!r} is not supported here")
            return fields[path]
        raise PodError(f"env {var['name']}: valueFrom {sorted(source)} is not supported here")

    def _security(self, spec: Json, key: str) -> Any:
        container = spec.get("securityContext") or {}
        if key in container:
            return container[key]
        return (self.spec.get("securityContext") or {}).get(key)

    def _identity(self, spec: Json) -> list[str]:
        """`setpriv` arguments: uid, gid, groups, capability bounding set, no_new_privs."""
        uid = int(self._security(spec, "runAsUser") or 0)
        gid = int(self._security(spec, "runAsGroup") or 0)
        if self._security(spec, "runAsNonRoot") and uid == 0:
            raise PodError(f"container {spec['name']!r}: runAsNonRoot, but it would run as uid 0")
        pod = self.spec.get("securityContext") or {}
        groups = [int(g) for g in pod.get("supplementalGroups") or []]
        if pod.get("fsGroup") is not None:
            groups.insert(0, int(pod["fsGroup"]))
        capabilities = (spec.get("securityContext") or {}).get("capabilities") or {}
        drop = {c.lower().removeprefix("cap_") for c in capabilities.get("drop") or []}
        add = {c.lower().removeprefix("cap_") for c in capabilities.get("add") or []}
        bounding = [] if "all" in drop else [c for c in DEFAULT_CAPABILITIES if c not in drop]
        bounding += sorted(add - set(bounding) - {"all"})
        argv = [self._setpriv, "--reuid", str(uid), "--regid", str(gid)]
        argv += ["--groups", ",".join(map(str, groups))] if groups else ["--clear-groups"]
        argv += [
            "--inh-caps",
            "-all",
            "--bounding-set",
            ",".join(["-all", *(f"+{c}" for c in bounding)]),
        ]
        if self._security(spec, "allowPrivilegeEscalation") is False:
            argv.append("--no-new-privs")
        return [*argv, "--"]

    def _volume(self, name: str) -> Path:
        """The directory of pod volume `name`, written on first use (shared by containers)."""
        if name in self._volumes:
            return self._volumes[name]
        (volume,) = [v for v in self.spec.get("volumes") or [] if v["name"] == name] or [None]
        if volume is None:
            raise PodError(f"volume {name!r} is mounted but not declared")
        directory = self.workdir / "volumes" / name
        directory.mkdir(parents=True)
        fs_group = (self.spec.get("securityContext") or {}).get("fsGroup")
        gid = int(fs_group) if fs_group is not None else None
        if "emptyDir" in volume:
            directory.chmod(0o777 if gid is None else 0o2777)
            if gid is not None:
                os.chown(directory, 0, gid)
        elif "configMap" in volume or "secret" in volume:
            kind = "configMap" if "configMap" in volume else "secret"
            source = volume[kind]
            ref = source.get("name") if kind == "configMap" else source.get("secretName")
            data = self._sources.lookup(kind, ref, bool(source.get("optional"))) or {}
            files = _projected_files(data, source, f"{kind} {ref!r}")
            _write_atomic_volume(directory, files, gid)
        else:
            kinds = sorted(set(volume) - {"name"})
            raise PodError(f"volume {name!r}: {kinds} volumes are not supported here")
        self._volumes[name] = directory
        return directory

    def _sandbox(self, spec: Json) -> list[str]:
        """bwrap arguments: the host root read-only, the container's volumes on top."""
        mounts: list[tuple[str, Path, bool]] = []
        for mount in spec.get("volumeMounts") or []:
            source = self._volume(mount["name"])
            if mount.get("subPath"):
                source = source / mount["subPath"]
                if not source.exists():
                    raise PodError(f"{spec['name']}: subPath {mount['subPath']!r} does not exist")
            target = os.path.realpath(mount["mountPath"])
            mounts.append((target, source, bool(mount.get("readOnly"))))
        read_only = bool(self._security(spec, "readOnlyRootFilesystem"))
        targets = {target for target, _, _ in mounts}
        argv = [self._bwrap, "--die-with-parent", "--new-session", "--unshare-pid", "--as-pid-1"]
        argv += ["--unshare-ipc", "--unshare-uts", "--hostname", self.name]
        argv += _host_root(targets, IMAGE_PATHS)
        argv += [
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "--tmpfs",
            "/dev/shm",
            "--ro-bind",
            "/sys",
            "/sys",
        ]
        if "/tmp" not in targets:
            argv += ["--perms", "1777", "--dir", "/tmp"]  # an image's empty /tmp
        for target, source, ro in sorted(mounts, key=lambda m: m[0].count("/")):
            argv += ["--ro-bind" if ro else "--bind", str(source), target]
        # The "image" (this checkout and its venv) may itself live under /tmp (a clone made
        # there), which the container's own /tmp hides: bind it again, on top.
        for path in sorted(IMAGE_PATHS):
            if path.startswith("/tmp/"):
                parents = Path(path).relative_to("/tmp").parents
                for parent in sorted(str(Path("/tmp", p)) for p in parents if str(p) != "."):
                    argv += ["--perms", "0755", "--dir", parent]  # enterable by its user
                argv += ["--ro-bind", path, path]
        if read_only:
            argv += ["--remount-ro", "/"]
        argv += ["--chdir", spec.get("workingDir") or "/"]
        return argv

    # --- running ---------------------------------------------------------------------------

    def _argv(self, container: _Container) -> list[str]:
        spec = container.spec
        words = [*spec["command"], *(spec.get("args") or [])]
        return [expand(str(word), container.env) for word in words]

    def _spawn(self, container: _Container) -> None:
        read_info, write_info = os.pipe()
        argv = [*container.bwrap, "--info-fd", str(write_info)]
        argv += [*container.identity, *self._argv(container)]
        with container.log.open("ab") as log:
            container.proc = subprocess.Popen(
                argv,
                env=container.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                pass_fds=(write_info,),
                process_group=0,
            )
        os.close(write_info)
        container.started_at = time.monotonic()
        try:
            info = _read_all(read_info, timeout=10)
        finally:
            os.close(read_info)
        try:
            container.pid = int(json.loads(info)["child-pid"])
        except (ValueError, KeyError) as exc:
            self._kill(container)
            raise PodError(
                f"{container.name}: bwrap did not start the sandbox:\n{container.output()}"
            ) from exc

    def exec_in(self, container: _Container, command: Sequence[str], timeout: float) -> HookResult:
        """Run `command` inside the running `container` (its namespaces, user, environment),
        as `kubectl exec` or an exec hook/probe does."""
        if container.pid is None or not container.running():
            return HookResult(None, f"container {container.name} is not running")
        argv = [self._nsenter, "-t", str(container.pid), "-m", "-p", "-u", "-i", "-r", "-w"]
        argv += [*container.identity, *(expand(w, container.env) for w in command)]
        try:
            done = subprocess.run(
                argv,
                env=container.env,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                timeout=max(timeout, 0.1),
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            output = (exc.stdout or b"") + (exc.stderr or b"")
            return HookResult(None, output.decode(errors="replace"))
        return HookResult(done.returncode, (done.stdout + done.stderr).decode(errors="replace"))

    def _port(self, container: _Container, port: int | str) -> int:
        if isinstance(port, int) or str(port).isdigit():
            return int(port)
        for entry in container.spec.get("ports") or []:
            if entry.get("name") == port:
                return int(entry["containerPort"])
        raise PodError(f"{container.name}: no container port named {port!r}")

    def _http_get(self, container: _Container, action: Json, timeout: float) -> HookResult:
        host = action.get("host") or POD_IP
        port = self._port(container, action["port"])
        kind = http.client.HTTPSConnection if action.get("scheme") == "HTTPS" else None
        connection = (kind or http.client.HTTPConnection)(host, port, timeout=timeout)
        try:
            headers = {h["name"]: h["value"] for h in action.get("httpHeaders") or []}
            connection.request("GET", action.get("path") or "/", headers=headers)
            response = connection.getresponse()
            body = response.read(1024).decode(errors="replace")
        except OSError as exc:
            return HookResult(None, str(exc))
        finally:
            connection.close()
        # The kubelet counts 2xx and 3xx as success (it does not follow off-host redirects).
        return HookResult(0 if 200 <= response.status < 400 else response.status, body)

    def _handler(self, container: _Container, action: Json, timeout: float) -> HookResult:
        """Run a probe's or hook's action: exec, httpGet, tcpSocket or sleep."""
        if "exec" in action:
            return self.exec_in(container, action["exec"]["command"], timeout)
        if "httpGet" in action:
            return self._http_get(container, action["httpGet"], timeout)
        if "tcpSocket" in action:
            target = action["tcpSocket"]
            port = self._port(container, target["port"])
            try:
                with socket.create_connection((target.get("host") or POD_IP, port), timeout):
                    return HookResult(0, "")
            except OSError as exc:
                return HookResult(None, str(exc))
        if "sleep" in action:
            time.sleep(min(float(action["sleep"]["seconds"]), timeout))
            return HookResult(0, "")
        raise PodError(f"{container.name}: unsupported probe/hook action {sorted(action)}")

    def _probe_passes(self, container: _Container, kind: str) -> bool:
        probe = container.spec.get(kind)
        if probe is None:
            return True
        if time.monotonic() < container.started_at + float(probe.get("initialDelaySeconds", 0)):
            return False
        result = self._handler(container, probe, float(probe.get("timeoutSeconds", 1)))
        return result.exit_code == 0

    def _wait(self, waiting: Sequence[_Container], kinds: Sequence[str], deadline: float) -> None:
        """Wait until each probe of `kinds` passes in each of `waiting`, in turn."""
        pending = {(c.name, kind): c for c in waiting for kind in kinds}
        while pending:
            for (name, kind), container in list(pending.items()):
                self._check_running()
                # Readiness is probed once the startup probe has passed.
                started = kind == "startupProbe" or (name, "startupProbe") not in pending
                if started and self._probe_passes(container, kind):
                    del pending[(name, kind)]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise PodError(
                    f"not ready within {self.ready_timeout}s: {sorted(pending)}\n" + self.logs()
                )
            time.sleep(PROBE_INTERVAL_SECONDS)

    def _check_running(self) -> None:
        for container in self._started():
            if not container.running():
                code = container.proc.returncode if container.proc else None
                raise PodError(
                    f"container {container.name} exited with code {code} while the pod "
                    f"started:\n{container.output()}\n{self.logs()}"
                )

    def _started(self) -> list[_Container]:
        """The long-running containers started so far: native sidecars and regular ones."""
        running = [c for c in self.init if c.sidecar] + self.containers
        return [c for c in running if c.proc is not None]

    def _post_start(self, container: _Container, deadline: float) -> None:
        hook = (container.spec.get("lifecycle") or {}).get("postStart")
        if hook is not None:
            result = self._handler(container, hook, deadline - time.monotonic())
            if result.exit_code != 0:
                raise PodError(f"{container.name}: postStart hook failed: {result.output}")

    def start(self) -> Self:
        """Init containers, native sidecars, then the regular containers; return once all are
        ready. On any failure everything started is killed and PodError raised."""
        deadline = time.monotonic() + self.ready_timeout
        try:
            for container in self.init:
                self._spawn(container)
                self._post_start(container, deadline)
                if container.sidecar:
                    self._wait([container], ["startupProbe"], deadline)
                    continue
                assert container.proc is not None
                try:
                    code = container.proc.wait(max(deadline - time.monotonic(), 0.1))
                except subprocess.TimeoutExpired:
                    raise PodError(f"init container {container.name} did not finish") from None
                if code != 0:
                    raise PodError(
                        f"init container {container.name} exited with {code}:\n"
                        + container.output()
                    )
            for container in self.containers:
                self._spawn(container)
                self._post_start(container, deadline)
            self._wait(self._started(), ["startupProbe", "readinessProbe"], deadline)
        except BaseException:
            self.kill()
            raise
        return self

    # --- stopping --------------------------------------------------------------------------

    def _terminate(self, container: _Container, deadline: float) -> None:
        """preStop, SIGTERM, wait until `deadline` (at least 2 s after preStop), SIGKILL."""
        self.stop_order.append(container.name)
        pre_stop: HookResult | None = None
        hook = (container.spec.get("lifecycle") or {}).get("preStop")
        if hook is not None and container.running():
            pre_stop = self._handler(container, hook, deadline - time.monotonic())
        deadline = max(deadline, time.monotonic() + MINIMUM_GRACE_SECONDS)
        killed = False
        proc = container.proc
        assert proc is not None
        if container.running() and container.pid is not None:
            os.kill(container.pid, signal.SIGTERM)
        try:
            proc.wait(max(deadline - time.monotonic(), 0))
        except subprocess.TimeoutExpired:
            killed = True
            self._kill(container)
        container.exit = ContainerExit(container.name, proc.returncode, killed, pre_stop)

    def _kill(self, container: _Container) -> None:
        proc = container.proc
        if proc is None:
            return
        if proc.poll() is None and container.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(container.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        proc.wait()

    def stop(self) -> dict[str, ContainerExit]:
        """Stop the pod as the kubelet deletes it; how each container ended, by name."""
        if not self.stopped:
            self.stopped = True
            deadline = time.monotonic() + self.grace_seconds
            regular = [c for c in self.containers if c.proc is not None]
            errors: list[BaseException] = []

            def terminate(container: _Container) -> None:
                try:
                    self._terminate(container, deadline)
                except BaseException as exc:  # re-raised below, not lost in the thread
                    errors.append(exc)

            threads = [threading.Thread(target=terminate, args=(c,), name=c.name) for c in regular]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            try:
                for container in reversed([c for c in self.init if c.sidecar and c.proc]):
                    self._terminate(container, deadline)
            finally:
                self.kill()
            if errors:
                raise PodError(f"stopping the pod failed: {errors[0]}") from errors[0]
        return {c.name: c.exit for c in [*self.init, *self.containers] if c.exit is not None}

    def kill(self) -> None:
        """SIGKILL every container still running (clean-up after a failure)."""
        self.stopped = True
        for container in [*self.containers, *reversed(self.init)]:
            self._kill(container)

    def container(self, name: str) -> _Container:
        """The running container `name`."""
        for container in [*self.init, *self.containers]:
            if container.name == name:
                return container
        raise KeyError(name)

    def logs(self) -> str:
        """Every container's output (the last part of each)."""
        parts = [f"--- {c.name}\n{c.output()}" for c in [*self.init, *self.containers]]
        return "\n".join(parts)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def _read_all(fd: int, timeout: float) -> bytes:
    """Read `fd` until EOF or `timeout`."""
    data = b""
    end = time.monotonic() + timeout
    while (left := end - time.monotonic()) > 0:
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            break
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        data += chunk
    return data


def _host_root(targets: Collection[str], image_paths: Collection[str]) -> list[str]:
    """bwrap arguments building a root from the host's, read-only, in which each of `targets`
    (real paths) can be created as a mount point and each of `image_paths` is reachable.

    bwrap's root is a tmpfs; each directory holding a target or an image path (an ancestor of
    one) is made on it, and every other entry of the host's directory is bound read-only (or
    re-made as a symlink) into it, so the host's own directories are never written to. Of a
    directory others may not enter (pyenv's interpreter under a private /root), only the
    image paths are bound.
    """
    special = {"/proc", "/dev", "/sys", "/tmp"}
    spliced = {"/"}
    for target in [*targets, *image_paths]:
        parent = os.path.dirname(target)
        while parent not in spliced and parent not in special:
            spliced.add(parent)
            parent = os.path.dirname(parent)
    argv: list[str] = []
    for directory in sorted(spliced, key=lambda d: (d.count("/"), d)):
        if directory != "/":
            argv += ["--dir", directory]
        private = not os.stat(directory).st_mode & 0o001
        for entry in sorted(os.listdir(directory)):
            path = os.path.join(directory, entry)
            if path in spliced or path in targets or path in special:
                continue
            if path in image_paths:
                argv += ["--ro-bind", path, path]
            elif private:
                continue
            elif os.path.islink(path):
                argv += ["--symlink", os.readlink(path), path]
            else:
                argv += ["--ro-bind", path, path]
    return argv
