"""Deployment pieces without processes: certificates and keys, ``flwr run`` connections, the
node config's data choice, site folders."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import load_ssh_private_key

from fedad.cli.certs import make_certificates
from fedad.cli.connections import Connection, write_connections
from fedad.cli.connections import main as connections_main
from fedad.cli.sites import make_sites
from fedad.config.schema import DataConfig, RunConfig
from fedad.data.factory import build_dataset
from fedad.errors import ConfigError, FedadError
from fedad.federation.site_data import node_config_applied, node_data
from tests.test_deployment import TINY


def test_certificates_chain_and_keys(tmp_path: Path):
    from flwr.cli.supernode.register import try_load_public_key

    files = make_certificates(tmp_path, ["superlink", "10.0.0.5"], supernodes=2)
    ca = x509.load_pem_x509_certificate(files["ca"].read_bytes())
    server = x509.load_pem_x509_certificate(files["server-cert"].read_bytes())
    server.verify_directly_issued_by(ca)  # raises if the signature does not match
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["superlink"]
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["10.0.0.5"]
    for i in range(2):
        key = load_ssh_private_key(files[f"supernode-{i}-key"].read_bytes(), None)
        assert isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp384r1"
        assert try_load_public_key(files[f"supernode-{i}-pub"])  # what flwr register reads
        assert stat.S_IMODE(files[f"supernode-{i}-key"].stat().st_mode) == 0o600
    assert stat.S_IMODE(files["server-key"].stat().st_mode) == 0o600
    before = files["ca"].read_bytes()
    with pytest.raises(FileExistsError, match="ca.crt"):
        make_certificates(tmp_path, ["superlink"], supernodes=2)
    assert files["ca"].read_bytes() == before  # nothing overwritten


def test_connections_are_read_by_flower(tmp_path: Path, monkeypatch):
    from flwr.cli.flower_config import read_superlink_connection

    home = tmp_path / "flwr-home"
    ca = make_certificates(tmp_path / "certs", ["localhost"], supernodes=0)["ca"]
    assert connections_main(["local-deployment", "--address", "127.0.0.1:8000", "--insecure",
                             "--home", str(home)]) == 0
    write_connections(home, [Connection("remote", "coord.example.org:8000", str(ca))],
                      default="remote")
    write_connections(home, [Connection("local-deployment", "127.0.0.1:9000")])  # replaced
    monkeypatch.setenv("FLWR_HOME", str(home))
    remote = read_superlink_connection()  # the default
    assert remote.name == "remote" and remote.address == "coord.example.org:8000"
    assert remote.root_certificates == str(ca.resolve()) and not remote.insecure
    local = read_superlink_connection("local-deployment")
    assert local.address == "127.0.0.1:9000" and local.insecure
    with pytest.raises(ConfigError, match="do not exist"):
        write_connections(home, [Connection("x", "h:1", str(tmp_path / "missing.crt"))])


def _context(node_config: dict) -> tuple[dict, int]:
    return node_config, 12345678901234567


def test_node_config_chooses_partition_or_own_data():
    part = node_data(*_context({"partition-id": 2, "num-partitions": 5}))
    assert (part.site, part.num_partitions, part.data_root) == (2, 5, None)
    own = node_data(*_context({"data-root": "/data", "partition-id": 1, "cache-dir": "/c"}))
    assert (own.site, own.data_root, own.cache_dir) == (1, "/data", "/c")
    anonymous = node_data(*_context({"data-root": "/data"}))
    assert 0 <= anonymous.site < 2**31  # from the node id: fits seeds and int64 metrics
    with pytest.raises(ConfigError, match="node 12345678901234567.*data-root"):
        node_data(*_context({}))

    cfg = node_config_applied(RunConfig(), part)
    assert cfg.dataset.name == "textures" and cfg.backbone.cache == "memory"
    cfg = RunConfig()
    cfg.dataset.name = "mvtec"
    cfg = node_config_applied(cfg, own)
    assert cfg.dataset.root == "/data" and cfg.backbone.cache == "disk"
    assert cfg.backbone.cache_dir == "/c"
    with pytest.raises(ConfigError, match="site 1.*needs a file layout"):
        node_config_applied(RunConfig(), own)  # textures have no data root


def test_sites_are_the_partition_as_mvtec_folders(tmp_path: Path):
    roots = make_sites(TINY, tmp_path, 3)
    trains = [build_dataset(DataConfig(name="mvtec", root=str(r), image_size=32), "train")
              for r in roots]
    assert sum(len(t) for t in trains) == 18  # every training image, each in one site
    for root, train in zip(roots, trains, strict=True):
        test = build_dataset(DataConfig(name="mvtec", root=str(root), image_size=32), "test")
        assert set(test.product_types) == set(train.product_types)  # its own types' tests
        anomalous = [i for i, y in enumerate(test.labels) if y == 1]
        assert anomalous and all(test[i].mask.sum() > 0 for i in anomalous)
    with pytest.raises(FedadError, match="not empty"):
        make_sites(TINY, tmp_path, 3)
