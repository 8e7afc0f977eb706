"""``docker-compose.yml`` checked against the app (no Docker engine needed): service names and
ports agree, every SuperNode has its own partition id and data folder, and every certificate
or key path exists once ``fedad-certs`` has run."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import re
import sys
from pathlib import Path

import pytest
import yaml
from flwr.common.config import parse_config_args
from packaging.specifiers import SpecifierSet

from fedad.cli.certs import DEFAULT_HOSTS, make_certificates
from fedad.config.flat import from_flat, to_flat
from fedad.config.schema import RunConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def _deploy_script(name: str):
    """A script of ``deploy/`` as a module."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "deploy" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


check_flwr_version = _deploy_script("check_flwr_version")


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
    """Every image defaults to one Flower version, from one place (FLWR_IMAGES), and the
    project's own flwr requirement admits it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    version = re.search(r"^ARG FLWR_VERSION=(\S+)$", dockerfile, re.M).group(1)
    assert re.search(r"^ARG FLWR_IMAGES=flwr$", dockerfile, re.M)  # Flower's own by default
    assert re.search(r"^FROM \$\{FLWR_IMAGES\}/superexec:\$\{FLWR_VERSION\}$", dockerfile, re.M)
    local = (ROOT / "deploy" / "flower" / "Dockerfile").read_text()
    assert re.search(r"^ARG FLWR_VERSION=(\S+)$", local, re.M).group(1) == version
    for target in ("superlink", "supernode", "superexec"):
        assert re.search(rf"^FROM base AS {target}$", local, re.M), target
    for name, service in services.items():
        if "build" in service:  # the app's image: SuperExecs
            assert service["build"]["context"] == "."
            assert service["build"]["args"] == {"FLWR_IMAGES": "flwr", "FLWR_VERSION": version,
                                               "PIP_CONSTRAINTS": ""}
            assert service["image"] == f"fedad-superexec:{version}", name
        else:  # Flower's SuperLink / SuperNode images
            assert service["image"] == f"flwr/{name.split('-')[0]}:{version}", name
    spec = check_flwr_version.flwr_requirement(ROOT / "pyproject.toml")
    assert spec and version in SpecifierSet(spec), f"flwr {version} outside flwr{spec}"


def test_flower_version_check(tmp_path: Path):
    """The build-time check: the installed flwr must be FLWR_VERSION, and the project must
    admit that version."""
    installed = importlib.metadata.version("flwr")
    assert check_flwr_version.check(installed, ROOT / "pyproject.toml") is None
    error = check_flwr_version.check("0.1.0", None)
    assert error and f"flwr {installed}" in error and "FLWR_VERSION=0.1.0" in error
    narrow = tmp_path / "pyproject.toml"
    narrow.write_text('dependencies = ["flwr[simulation]>=99.0", "torch>=2.4"]\n')
    assert check_flwr_version.flwr_requirement(narrow) == ">=99.0"
    error = check_flwr_version.check(installed, narrow)
    assert error and "outside the project's requirement flwr>=99.0" in error
    assert check_flwr_version.main([installed, str(ROOT / "pyproject.toml")]) == 0
    assert check_flwr_version.main(["0.1.0"]) == 1


def test_build_ca_is_a_secret_with_a_harmless_default(services: dict):
    """A host CA bundle reaches the build as a secret (in no layer); without one the build
    uses the image's own store: the default file holds no certificate."""
    compose = yaml.safe_load(_defaults((ROOT / "docker-compose.yml").read_text()))
    default = ROOT / compose["secrets"]["ca"]["file"]
    assert default.is_file() and "BEGIN CERTIFICATE" not in default.read_text()
    for name, service in services.items():
        if "build" in service:
            assert service["build"]["secrets"] == ["ca"], name
    for dockerfile in (ROOT / "Dockerfile", ROOT / "deploy" / "flower" / "Dockerfile"):
        text = dockerfile.read_text()
        assert "--mount=type=secret,id=ca,required=false" in text, dockerfile
        assert not re.search(r"^(COPY|ADD|ENV)\b.*(ca-certificates|\.crt|PIP_CERT)", text, re.M)




def _outputs(out: Path, run: str, misplaced: bool = False) -> None:
    """A copied-out deployment: the coordinator's volume and three site volumes."""
    (out / "server" / run).mkdir(parents=True)
    per_client = {str(i): {"i_auroc": 0.7, "p_auroc": 0.8, "pro": 0.5} for i in range(3)}
    (out / "server" / run / "rounds.json").write_text(json.dumps({
        "rounds": [{"round": 1}, {"round": 2}], "rejected": [],
        "final": {"i_auroc": {"mean": 0.7, "std": 0.1}, "per_client": per_client}}))
    for i in range(3):
        site = out / f"site-{i}" / run / f"site-{i}"
        site.mkdir(parents=True)
        (site / "state.pt").write_bytes(b"x")
    if misplaced:  # site 0's state also in site 1's volume
        (out / "site-1" / run / "site-0").mkdir()


def test_compose_check_reads_the_copied_outputs(tmp_path: Path):
    """deploy/compose_check.py's output check passes a good layout and names what is wrong in
    a bad one (a site's state in another site's volume, a site without metrics)."""
    mod = _deploy_script("compose_check")
    _outputs(tmp_path / "good", "run-7")
    entry = {"name": "feddymem", "run_id": "7"}
    mod.check_run(entry, tmp_path / "good", caches=[5, 6, 7])
    assert entry["rounds"] == [1, 2] and set(entry["per_client"]) == {"0", "1", "2"}
    assert entry["final"] == {"i_auroc": 0.7}
    assert entry["state_placement"]["site-1 volume"] == ["site-1"]
    _outputs(tmp_path / "bad", "run-7", misplaced=True)
    with pytest.raises(mod.CheckFailed, match="volume site-1 holds"):
        mod.check_run({"name": "feddymem", "run_id": "7"}, tmp_path / "bad", caches=[5, 6, 7])
    rounds = tmp_path / "good" / "server" / "run-7" / "rounds.json"
    result = json.loads(rounds.read_text())
    result["final"]["per_client"]["0"].update(p_auroc=float("nan"), pro=float("nan"))
    rounds.write_text(json.dumps(result))  # image-level-only data: no pixel metrics
    mod.check_run({"name": "feddymem", "run_id": "7"}, tmp_path / "good", caches=[5, 6, 7])
    result["final"]["per_client"]["1"]["i_auroc"] = 1.5
    rounds.write_text(json.dumps(result))
    with pytest.raises(mod.CheckFailed, match="out of"):
        mod.check_run({"name": "feddymem", "run_id": "7"}, tmp_path / "good", caches=[5, 6, 7])
    del result["final"]["per_client"]["2"]
    rounds.write_text(json.dumps(result))
    with pytest.raises(mod.CheckFailed, match="not all of 3"):
        mod.check_run({"name": "feddymem", "run_id": "7"}, tmp_path / "good", caches=[5, 6, 7])
