"""``docker-compose.yml`` checked against the app (no Docker engine needed): service names and
ports agree, every SuperNode has its own partition id and data folder, and every certificate
or key path exists once ``fedad-certs`` has run."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args

from fedad.cli.certs import DEFAULT_HOSTS, make_certificates
from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _defaults(text: str) -> str:
    """Compose interpolation with every variable unset: ``${X:-default}`` -> ``default``."""
    return re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:-([^}]*)\}", r"\1", text)


@pytest.fixture(scope="module")
def services() -> dict:
    text = _defaults((ROOT / "docker-compose.yml").read_text())
    assert "${" not in text, "a variable without a default"
    return yaml.safe_load(text)["services"]


def flag(service: dict, name: str) -> str:
    cmd = [str(c) for c in service["command"]]
    assert name in cmd, f"{name} missing from {cmd}"
    return cmd[cmd.index(name) + 1]


def mounts(service: dict) -> dict[str, str]:
    """Container path -> host path (or volume name)."""
    out = {}
    for vol in service.get("volumes", []):
        source, target = vol.split(":")[:2]
        out[target] = source
    return out


def host_path(service: dict, container_path: str) -> str | None:
    """The host path a bind mount maps ``container_path`` to."""
    for target, source in sorted(mounts(service).items(), key=lambda kv: -len(kv[0])):
        if container_path == target or container_path.startswith(target + "/"):
            return source + container_path[len(target):]
    return None


def test_superlink_address_ports_and_superexecs(services: dict):
    link = services["superlink"]
    port = flag(link, "--port")
    assert f"{port}:{port}" in link["ports"]
    assert flag(link, "--isolation") == "process"
    assert flag(services["superexec-serverapp"], "--runtime-api-address") == f"superlink:{port}"
    # the ServerApp's SuperExec verifies the SuperLink's certificate under that name
    assert "superlink" in DEFAULT_HOSTS
    nodes = sorted(n for n in services if n.startswith("supernode-"))
    assert len(nodes) == 3
    for name in nodes:
        node = services[name]
        assert flag(node, "--superlink") == f"superlink:{port}"
        assert flag(node, "--isolation") == "process"
        execs = [s for s in services.values()
                 if "--runtime-api-address" in s.get("command", [])
                 and flag(s, "--runtime-api-address") == f"{name}:{flag(node, '--port')}"]
        assert len(execs) == 1, f"{name}: no SuperExec on its Runtime API port"


def test_every_supernode_has_its_own_partition_and_data(services: dict):
    seen_ids, seen_roots, seen_keys = set(), set(), set()
    for name in sorted(n for n in services if n.startswith("supernode-")):
        node = services[name]
        conf = parse_config_args([flag(node, "--node-config")])
        (app,) = [s for s in services.values()
                  if "--runtime-api-address" in s.get("command", [])
                  and flag(s, "--runtime-api-address").startswith(f"{name}:")]
        data = host_path(app, conf["data-root"])
        assert data, f"{name}: data-root {conf['data-root']} is not mounted in its ClientApp"
        assert host_path(app, conf["cache-dir"]), f"{name}: cache-dir is not a volume"
        seen_ids.add(conf["partition-id"])
        seen_roots.add(data)
        seen_keys.add(flag(node, "--auth-supernode-private-key"))
    assert len(seen_ids) == len(seen_roots) == len(seen_keys) == 3


def test_certificate_paths_exist_after_the_key_script(services: dict, tmp_path: Path):
    make_certificates(tmp_path / "certificates", list(DEFAULT_HOSTS), supernodes=3)
    checked = 0
    for name, service in services.items():
        for value in map(str, service.get("command", [])):
            if "/certificates/" not in value:
                continue
            source = host_path(service, value)
            assert source is not None, f"{name}: {value} is not mounted"
            assert (tmp_path / source).resolve().is_file(), f"{name}: {source} missing"
            checked += 1
    assert checked >= 3 + 3 * 2 + 1  # superlink 3, each node CA + key, serverapp CA


def test_deploy_run_config_matches_the_compose_file(services: dict):
    with open(ROOT / "deploy" / "run_config.toml", "rb") as f:
        table = tomllib.load(f)
    flat = parse_config_args([str(ROOT / "deploy" / "run_config.toml")])
    unknown = set(flat) - set(to_flat(RunConfig()))
    assert not unknown, f"unknown run-config keys {unknown}"
    cfg = from_flat({**to_flat(RunConfig()), **flat})
    assert cfg.num_clients == len([n for n in services if n.startswith("supernode-")])
    assert table["dataset"]["name"] in ("mvtec", "mtd", "visa")
    assert cfg.output_dir in mounts(services["superexec-serverapp"])


def test_images_share_one_flower_version(services: dict):
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = re.search(r"^ARG FLWR_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert re.search(r"^FROM flwr/superexec:\$\{FLWR_VERSION\}$", dockerfile, re.M)
    for name, service in services.items():
        if "build" in service:  # the app's image: SuperExecs
            assert service["build"]["context"] == "."
            assert service["build"]["args"]["FLWR_VERSION"] == version, name
        else:  # Flower's own SuperLink / SuperNode images
            assert service["image"].split(":")[1] == version, name
