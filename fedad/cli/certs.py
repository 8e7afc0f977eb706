"""``fedad-certs``: TLS certificates for the SuperLink and authentication keys for SuperNodes.

    fedad-certs                          # ./certificates: CA, SuperLink cert, 3 SuperNode keys
    fedad-certs --out certs --hosts coord.example.org 10.0.0.5 --supernodes 5

Writes (private keys readable by their owner only; never commit them, the folder is
git-ignored):

* ``ca.crt`` / ``ca.key``: a self-signed certificate authority. Give ``ca.crt`` to every
  SuperNode (``--root-certificates``) and to ``flwr run`` (the connection's
  ``root-certificates``).
* ``server.pem`` / ``server.key``: the SuperLink's certificate, signed by the CA, valid for
  ``--hosts`` (DNS names and IP addresses the others use to reach it).
* ``supernode-<i>.key`` / ``supernode-<i>.pub``: EC P-384 key pairs in OpenSSH format for
  SuperNode authentication (``--auth-supernode-private-key`` on the node; the ``.pub`` is
  registered with ``flwr supernode register``).

Elliptic-curve keys (NIST P-384) are what Flower's node authentication accepts.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

DEFAULT_HOSTS = ("localhost", "127.0.0.1", "superlink")


def _write(path: Path, data: bytes, private: bool) -> None:
    path.write_bytes(data)
    if private:
        os.chmod(path, 0o600)


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san(hosts: list[str]) -> x509.SubjectAlternativeName:
    names: list[x509.GeneralName] = []
    for h in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            names.append(x509.DNSName(h))
    return x509.SubjectAlternativeName(names)


def make_certificates(out: Path, hosts: list[str], supernodes: int, days: int = 365,
                      force: bool = False) -> dict[str, Path]:
    """Write the CA, the SuperLink certificate and ``supernodes`` key pairs to ``out``.

    Returns:
        Name -> path of every file written (``ca``, ``server-cert``, ``server-key``,
        ``supernode-<i>-key``, ``supernode-<i>-pub``).

    Raises:
        FileExistsError: a file exists already and ``force`` is false (nothing is written).
    """
    out = Path(out)
    files = {"ca": out / "ca.crt", "ca-key": out / "ca.key", "server-cert": out / "server.pem",
             "server-key": out / "server.key"}
    for i in range(supernodes):
        files[f"supernode-{i}-key"] = out / f"supernode-{i}.key"
        files[f"supernode-{i}-pub"] = out / f"supernode-{i}.pub"
    existing = [str(p) for p in files.values() if p.exists()]
    if existing and not force:
        raise FileExistsError(f"would overwrite {', '.join(existing)}; pass --force")
    out.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.timezone.utc)
    valid = dict(not_valid_before=now - dt.timedelta(minutes=5),
                 not_valid_after=now + dt.timedelta(days=days))

    ca_key = ec.generate_private_key(ec.SECP384R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fedad federation CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(valid["not_valid_before"]).not_valid_after(valid["not_valid_after"])
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                       content_commitment=False, key_encipherment=False,
                                       data_encipherment=False, key_agreement=False,
                                       encipher_only=False, decipher_only=False), critical=True)
          .sign(ca_key, hashes.SHA384()))

    server_key = ec.generate_private_key(ec.SECP384R1())
    server = (x509.CertificateBuilder()
              .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hosts[0])]))
              .issuer_name(ca_name).public_key(server_key.public_key())
              .serial_number(x509.random_serial_number())
              .not_valid_before(valid["not_valid_before"])
              .not_valid_after(valid["not_valid_after"])
              .add_extension(_san(hosts), critical=False)
              .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
              .add_extension(x509.ExtendedKeyUsage([x509.ExtendedKeyUsageOID.SERVER_AUTH]),
                             critical=False)
              .sign(ca_key, hashes.SHA384()))

    _write(files["ca"], ca.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files["ca-key"], _pem_key(ca_key), private=True)
    _write(files["server-cert"], server.public_bytes(serialization.Encoding.PEM), private=False)
    _write(files["server-key"], _pem_key(server_key), private=True)
    for i in range(supernodes):
        key = ec.generate_private_key(ec.SECP384R1())
        _write(files[f"supernode-{i}-key"],
               key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption()), private=True)
        _write(files[f"supernode-{i}-pub"],
               key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                             serialization.PublicFormat.OpenSSH) + b"\n",
               private=False)
    return files


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-certs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("certificates"))
    parser.add_argument("--hosts", nargs="+", default=list(DEFAULT_HOSTS),
                        help="names/IPs of the SuperLink (default: %(default)s)")
    parser.add_argument("--supernodes", type=int, default=3, help="key pairs to make")
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--force", action="store_true", help="overwrite existing files")
    args = parser.parse_args(argv)
    try:
        files = make_certificates(args.out, args.hosts, args.supernodes, args.days, args.force)
    except FileExistsError as exc:
        print(f"fedad-certs: error: {exc}", file=sys.stderr)
        return 2
    for name, path in files.items():
        print(f"{name:16s} {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
