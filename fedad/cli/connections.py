"""``fedad-connections``: SuperLink connections for ``flwr run``, written to Flower's own
config file ``$FLWR_HOME/config.toml`` (not ``[tool.flwr.federations]`` in pyproject.toml,
which is legacy and which ``flwr run`` rewrites).

    export FLWR_HOME=$PWD/.flwr                      # the project's Flower home (git-ignored)
    fedad-connections local-deployment --address 127.0.0.1:8000 --insecure
    fedad-connections coordinator --address coord.example.org:8000 \\
        --root-certificates certificates/ca.crt --default
    flwr run . coordinator --run-config deploy/run_config.toml

Existing connections and settings in the file are kept; a connection of the same name is
replaced.
"""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import tomli_w

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

from fedad.errors import ConfigError

CONFIG_FILE = "config.toml"


@dataclass(frozen=True)
class Connection:
    """One ``[superlink.<name>]`` table: insecure, or TLS verified with ``root_certificates``."""

    name: str
    address: str
    root_certificates: str | None = None

    def table(self) -> dict:
        if self.root_certificates is None:
            return {"address": self.address, "insecure": True}
        ca = Path(self.root_certificates).expanduser().resolve()
        if not ca.is_file():
            raise ConfigError(f"connection {self.name!r}: root certificates {ca} do not exist "
                              "(make them with fedad-certs)")
        return {"address": self.address, "root-certificates": str(ca)}


def write_connections(home: Path, connections: list[Connection], default: str | None = None
                      ) -> Path:
    """Add (or replace) ``connections`` in ``<home>/config.toml``; returns its path.

    Raises:
        ConfigError: the existing file is not valid TOML, or a certificate file is missing.
    """
    home = Path(home).expanduser()
    home.mkdir(parents=True, exist_ok=True)
    path = home / CONFIG_FILE
    try:
        config = tomllib.loads(path.read_text()) if path.is_file() else {}
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path} is not valid TOML: {exc}") from exc
    superlink = config.setdefault("superlink", {})
    for conn in connections:
        if not conn.name or conn.name == "default" or "." in conn.name:
            raise ConfigError(f"bad connection name {conn.name!r}")
        superlink[conn.name] = conn.table()
    if default is not None:
        superlink["default"] = default
    elif "default" not in superlink and connections:
        superlink["default"] = connections[0].name
    # Flower expects "default" first in the table.
    config["superlink"] = {"default": superlink.pop("default"), **superlink}
    path.write_text(tomli_w.dumps(config))
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-connections",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("name", help="connection name, used as `flwr run . <name>`")
    parser.add_argument("--address", required=True, help="SuperLink host:port")
    tls = parser.add_mutually_exclusive_group(required=True)
    tls.add_argument("--root-certificates", help="CA certificate (PEM) to verify the SuperLink")
    tls.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    parser.add_argument("--default", action="store_true", help="make it `flwr run`'s default")
    parser.add_argument("--home", default=os.environ.get("FLWR_HOME"),
                        help="Flower home (default: $FLWR_HOME, else ./.flwr)")
    args = parser.parse_args(argv)
    home = Path(args.home or ".flwr")
    conn = Connection(args.name, args.address, None if args.insecure else args.root_certificates)
    try:
        path = write_connections(home, [conn], default=args.name if args.default else None)
    except ConfigError as exc:
        print(f"fedad-connections: error: {exc}", file=sys.stderr)
        return 2
    print(f"{path}: connection {args.name!r} -> {args.address} "
          f"({'insecure' if args.insecure else 'TLS'}); use FLWR_HOME={home.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
