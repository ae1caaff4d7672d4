"""Envoy's dynamic config: the bootstrap, the LDS/RDS/CDS files, route ids across reloads.

The static form (`test_envoy_config.py`) and the files must carry the same resources; the files
of several configs (a reload's union) must hold each config's routes and clusters once; the real
Envoy must apply the files it is pointed at.
"""

from __future__ import annotations

import copy
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

import betterproto2
import httpx
import pytest
import yaml

from extproc.bootstrap import (
    CDS_FILE,
    LDS_FILE,
    RDS_FILE,
    render_bootstrap,
    render_static_bootstrap,
    write_xds_files,
    xds_files,
)
from extproc.bootstrap.common import BETTERPROTO_ORIGINALS, to_json_dict, to_yaml
from extproc.config.loading import parse_config
from extproc.config.schema import GatewayConfig
from extproc.config.topology import model_route_ids, model_stat_name
from extproc.dev.stack import find_envoy_binary, free_ports
from extproc.server.xds_status import parse_stats
from extproc.xds_files import INPUTS_PREFIX, inputs_digest, inputs_on_disk
from tests.unit.test_envoy_config import MODELS, PROVIDERS

Json = dict[str, Any]
RESOURCE_TYPES = {
    CDS_FILE: "type.googleapis.com/envoy.config.cluster.v3.Cluster",
    RDS_FILE: "type.googleapis.com/envoy.config.route.v3.RouteConfiguration",
    LDS_FILE: "type.googleapis.com/envoy.config.listener.v3.Listener",
}


def config_data(**sections: Any) -> Json:
    data: Json = {"auth": {"enabled": False}, "providers": copy.deepcopy(PROVIDERS)}
    data["models"] = copy.deepcopy(MODELS)
    data.update(sections)
    return data


def build(data: Json) -> GatewayConfig:
    return parse_config(data)


def files_of(*configs: GatewayConfig) -> dict[str, Json]:
    """Each file's parsed YAML, by name."""
    return {f.name: yaml.safe_load(f.text) for f in xds_files(configs)}


def resources(files: dict[str, Json], name: str) -> list[Json]:
    docs = cast(list[Json], files[name]["resources"])
    for doc in docs:
        assert doc["@type"] == RESOURCE_TYPES[name]
    return [{k: v for k, v in doc.items() if k != "@type"} for doc in docs]


def route_names(files: dict[str, Json]) -> list[str]:
    (config,) = resources(files, RDS_FILE)
    (vhost,) = config["virtual_hosts"]
    return [route["name"] for route in vhost["routes"]]


def cluster_names(files: dict[str, Json]) -> list[str]:
    return [c["name"] for c in resources(files, CDS_FILE)]


# --- the bootstrap -----------------------------------------------------------------------------


def test_the_bootstrap_holds_only_what_needs_a_restart_and_reads_the_rest_from_files() -> None:
    config = build(config_data(reload={"xds_directory": "/srv/xds"}))
    bootstrap = render_bootstrap(config)
    assert [c["name"] for c in bootstrap["static_resources"]["clusters"]] == ["extproc"]
    assert "listeners" not in bootstrap["static_resources"]
    for source, name in (("lds_config", LDS_FILE), ("cds_config", CDS_FILE)):
        assert bootstrap["dynamic_resources"][source] == {
            "path_config_source": {
                "path": f"/srv/xds/{name}",
                "watched_directory": {"path": "/srv/xds"},
            },
            "resource_api_version": "V3",
        }
    assert [layer["name"] for layer in bootstrap["layered_runtime"]["layers"]] == [
        "gateway",
        "admin",
    ]


def test_the_files_carry_the_static_forms_listener_routes_and_clusters() -> None:
    config = build(config_data(reload={"xds_directory": "/srv/xds"}))
    static = render_static_bootstrap(config)["static_resources"]
    files = files_of(config)
    (listener,) = resources(files, LDS_FILE)
    (static_listener,) = static["listeners"]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    static_manager = static_listener["filter_chains"][0]["filters"][0]["typed_config"]
    # The routes come from RDS instead of inline; nothing else about the listener differs.
    assert manager.pop("rds") == {
        "route_config_name": "gateway_routes",
        "config_source": {
            "path_config_source": {
                "path": f"/srv/xds/{RDS_FILE}",
                "watched_directory": {"path": "/srv/xds"},
            },
            "resource_api_version": "V3",
        },
    }
    (routes,) = resources(files, RDS_FILE)
    assert static_manager.pop("route_config") == routes
    assert listener == static_listener
    assert resources(files, CDS_FILE) == static["clusters"][1:]
    assert static["clusters"][0]["name"] == "extproc"


def test_versions_are_content_hashes_and_a_processor_only_change_rewrites_nothing() -> None:
    data = config_data()
    first = xds_files([build(data)])
    assert [f.name for f in first] == [CDS_FILE, RDS_FILE, LDS_FILE]
    for file in first:
        assert yaml.safe_load(file.text)["version_info"] == file.version
    assert [f.version for f in xds_files([build(copy.deepcopy(data))])] == [
        f.version for f in first
    ]
    data["auth"] = {"enabled": True}
    data["tenants"] = [{"name": "t", "api_key_sha256": ["a" * 64]}]
    assert xds_files([build(data)]) == first
    data["models"].append({"name": "new", "targets": [{"provider": "local", "model": "n"}]})
    changed = {f.name: f.version for f in xds_files([build(data)])}
    assert changed[LDS_FILE] == first[2].version  # the listener is the same
    assert changed[CDS_FILE] != first[0].version and changed[RDS_FILE] != first[1].version


def test_each_file_names_its_inputs_which_ignore_processor_only_sections() -> None:
    data = config_data()
    (first, *_) = xds_files([build(data)])
    inputs = first.text.splitlines()[1]
    assert inputs == INPUTS_PREFIX + inputs_digest([build(data)])
    data["auth"] = {"enabled": True}
    data["tenants"] = [{"name": "t", "api_key_sha256": ["b" * 64]}]
    assert inputs_digest([build(data)]) == inputs_digest([build(config_data())])
    # An older config that renders alike adds nothing to a reload's files.
    assert inputs_digest([build(data), build(config_data())]) == inputs_digest([build(data)])
    data["limits"] = {"default_timeout_seconds": 3}
    assert inputs_digest([build(data)]) != inputs_digest([build(config_data())])


def test_the_inputs_on_disk_are_known_only_when_every_file_agrees(tmp_path: Path) -> None:
    config = build(config_data())
    assert inputs_on_disk(tmp_path) is None
    files = xds_files([config])
    write_xds_files(tmp_path, files)
    assert inputs_on_disk(tmp_path) == inputs_digest([config])
    other = xds_files([build(config_data(limits={"default_timeout_seconds": 3}))])
    write_xds_files(tmp_path, other[:1])
    assert inputs_on_disk(tmp_path) is None


# --- route ids across reloads ------------------------------------------------------------------


def test_route_ids_of_unchanged_models_survive_edits_elsewhere() -> None:
    data = config_data()
    before = model_route_ids(build(data))
    data["models"].insert(0, {"name": "first", "targets": [{"provider": "oai", "model": "f"}]})
    data["models"][-1]["owned_by"] = "someone"  # "local-only" changes
    after = model_route_ids(build(data))
    unchanged = [m["name"] for m in MODELS if m["name"] != "local-only"]
    assert {n: after[n] for n in unchanged} == {n: before[n] for n in unchanged}
    assert after["local-only"] != before["local-only"]


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["providers"][0].update(base_url="http://127.0.0.1:8001/v1"),  # "local"
        lambda d: d.update(resilience={"max_retries": 1}),
        lambda d: d.update(limits={"default_timeout_seconds": 5}),
        lambda d: d.update(processor={"message_timeout_ms": 500}),
    ],
)
def test_a_change_of_what_a_model_renders_from_changes_its_route_id(change: Any) -> None:
    data = config_data()
    before = model_route_ids(build(data))
    change(data)
    after = model_route_ids(build(data))
    assert after["chain"] != before["chain"]  # its first target is on "local"


def test_stat_names_are_per_model_name_envoy_safe_and_distinct() -> None:
    config = build(config_data())
    names = {model_stat_name(m.name) for m in config.models}
    assert len(names) == len(config.models)
    assert model_stat_name("org/weighted model").startswith("org_weighted_model_")
    assert model_stat_name("a/b") != model_stat_name("a_b")
    assert model_stat_name("llama-3.1-8b").startswith("llama-3_1-8b_")
    for name in names:
        assert "." not in name and " " not in name
    for cluster in resources(files_of(config), CDS_FILE):
        assert cluster["alt_stat_name"] == model_stat_name(
            next(
                m.name for m in config.models if model_route_ids(config)[m.name] == cluster["name"]
            )
        )


# --- the union of a reload ---------------------------------------------------------------------


def test_the_files_of_a_reload_hold_the_old_and_the_new_routes_and_clusters_once() -> None:
    old_data = config_data(
        resilience={"processor_failure_open": True, "fail_open_model": "local-only"}
    )
    old = build(old_data)
    new_data = copy.deepcopy(old_data)
    new_data["models"] = [m for m in new_data["models"] if m["name"] != "h2"]  # removed
    new_data["models"][0]["targets"].pop()  # "chain" changed
    new_data["models"].append({"name": "added", "targets": [{"provider": "oai", "model": "a"}]})
    new = build(new_data)
    old_ids, new_ids = model_route_ids(old), model_route_ids(new)
    files = files_of(new, old)

    clusters = cluster_names(files)
    assert len(clusters) == len(set(clusters))
    expected = {*new_ids.values(), "fail_open", old_ids["h2"], old_ids["chain"]}
    assert set(clusters) == expected
    assert old_ids["chain"] != new_ids["chain"]

    routes = route_names(files)
    new_model_routes = [f"model_{new_ids[m.name]}" for m in new.models]
    retired = [f"model_{old_ids['chain']}", f"model_{old_ids['h2']}"]
    assert routes == [*new_model_routes, *retired, "processor_failed_open", "no_provider_selected"]
    # The listener is the new config's alone.
    assert resources(files, LDS_FILE) == resources(files_of(new), LDS_FILE)


def test_an_unchanged_reload_renders_the_same_files() -> None:
    config = build(config_data())
    assert xds_files([config, config]) == xds_files([config])


# --- writing -----------------------------------------------------------------------------------


def test_files_are_replaced_whole_and_only_when_their_text_changed(tmp_path: Path) -> None:
    directory = tmp_path / "xds"
    data = config_data()
    files = xds_files([build(data)])
    assert write_xds_files(directory, files) == [CDS_FILE, RDS_FILE, LDS_FILE]
    assert sorted(p.name for p in directory.iterdir()) == sorted([CDS_FILE, RDS_FILE, LDS_FILE])
    for file in files:
        assert (directory / file.name).read_text(encoding="utf-8") == file.text
        assert (directory / file.name).stat().st_mode & 0o777 == 0o644
    assert write_xds_files(directory, files) == []
    replaced = [replace(f, text=f.text + "# x\n") if f.name == RDS_FILE else f for f in files]
    assert write_xds_files(directory, replaced) == [RDS_FILE]
    assert len(list(directory.iterdir())) == 3  # no staging file left behind


# --- serialisation -----------------------------------------------------------------------------


def test_the_yaml_emitter_writes_what_pyyaml_writes() -> None:
    data = render_static_bootstrap(build(config_data()))
    pure = yaml.dump(data, Dumper=yaml.SafeDumper, sort_keys=False, width=1 << 16)
    assert to_yaml(data).split("\n", 1)[1] == pure


def test_the_faster_betterproto_gives_the_same_output_and_still_validates(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from envoy_data_plane.envoy.config.cluster.v3 import Cluster

    config = build(config_data())
    fast = [f.text for f in xds_files([config])]
    for name, original in BETTERPROTO_ORIGINALS.items():
        monkeypatch.setattr(betterproto2.Message, name, original)
    assert [f.text for f in xds_files([config])] == fast
    monkeypatch.undo()
    cluster = Cluster(name="x")
    cluster.name = 5  # type: ignore[assignment]
    with pytest.raises(Exception, match="string"):
        to_json_dict(cluster)


# --- the real Envoy ------------------------------------------------------------------------------


def test_envoy_applies_the_files_it_is_pointed_at(tmp_path: Path) -> None:
    listener_port, admin_port, processor_admin = free_ports(3)
    data = config_data(
        listener={"address": "127.0.0.1", "port": listener_port},
        envoy_admin={"address": "127.0.0.1", "port": admin_port},
        processor={"unix_socket": str(tmp_path / "p.sock"), "admin_port": processor_admin},
        reload={"xds_directory": str(tmp_path / "xds")},
    )
    config = build(data)
    files = xds_files([config])
    write_xds_files(config.reload.xds_directory, files)
    bootstrap = tmp_path / "envoy.yaml"
    bootstrap.write_text(to_yaml(render_bootstrap(config)), encoding="utf-8")
    envoy = subprocess.Popen(
        [str(find_envoy_binary()), "-c", str(bootstrap), "--disable-hot-restart", "-l", "error"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        wanted = {f.name: f.version for f in files}
        deadline = time.monotonic() + 30
        state = None
        while time.monotonic() < deadline:
            try:
                text = httpx.get(f"http://127.0.0.1:{admin_port}/stats", timeout=2).text
            except httpx.HTTPError:
                time.sleep(0.1)
                continue
            state = parse_stats(text)
            if state.versions == wanted:
                break
            time.sleep(0.1)
        assert state is not None and state.versions == wanted, state
        assert set(state.rejected.values()) == {0}
    finally:
        envoy.terminate()
        _, errors = envoy.communicate(timeout=10)
    assert b"rejected" not in errors, errors.decode()
