"""A Flower deployment on this machine: a real ``flower-superlink`` and one real
``flower-supernode`` per site on 127.0.0.1 (free ports), optionally with TLS and SuperNode
authentication; the same processes ``docker-compose.yml`` runs on several hosts.

    fedad-deploy-local --sites sites/site-0 sites/site-1 sites/site-2 [--secure] \\
        [key=value ...]

Each SuperNode reads its own data root (``data-root`` node config, ``dataset.name=mvtec`` by
default: make such folders with ``fedad-sites``) and keeps its features on disk
(``cache-dir``). With ``--secure`` the SuperLink serves TLS with certificates from
``fedad-certs`` and admits only SuperNodes whose public keys were registered with
``flwr supernode register``. Every process started here is stopped on exit.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
from pathlib import Path

from fedad.cli.certs import make_certificates
from fedad.cli.connections import Connection, write_connections
from fedad.cli.flwr_run import flwr_run, run_status
from fedad.cli.overrides import compose
from fedad.cli.processes import ManagedProcess, exit_on_sigterm, flower_env, free_port
from fedad.cli.sim import PROJECT, write_run_config
from fedad.config.schema import RunConfig
from fedad.errors import FedadError
from fedad.progress import setup_logging

log = logging.getLogger("fedad")
CONNECTION = "local-deployment"


class LocalDeployment:
    """``with LocalDeployment(work, sites) as dep: dep.run(cfg)``.

    Args:
        work: folder for Flower's home, logs, certificates, feature caches and results.
        sites: one data root per SuperNode (SuperNode ``i`` gets ``partition-id=i``).
        secure: TLS on every connection and SuperNode authentication (each node's key is
            registered before it starts).
        certs: certificate folder from :func:`make_certificates` (made in ``work`` if None).
        isolation: ``subprocess`` (the SuperLink/SuperNodes start the apps themselves) or
            ``process`` (a ``flower-superexec`` per SuperLink/SuperNode runs them, as the
            separate containers of ``docker-compose.yml`` do).
    """

    def __init__(self, work: Path, sites: list[Path], secure: bool = False,
                 certs: Path | None = None, isolation: str = "subprocess",
                 startup_timeout: float = 60.0) -> None:
        if isolation not in ("subprocess", "process"):
            raise FedadError(f"isolation must be subprocess or process, not {isolation!r}")
        self.isolation = isolation
        self.work = Path(work).resolve()
        self.sites = [Path(s).resolve() for s in sites]
        self.secure = secure
        self.certs = Path(certs).resolve() if certs else self.work / "certificates"
        self.startup_timeout = startup_timeout
        self.home = self.work / ".flwr"
        self.env = flower_env(self.home)
        self.port = free_port()
        self.superlink: ManagedProcess | None = None
        self.supernodes: list[ManagedProcess] = []
        self.superexecs: list[ManagedProcess] = []

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.certs / "ca.crt"

    def _tls_client(self) -> list[str]:
        return ["--root-certificates", str(self.ca)] if self.secure else ["--insecure"]

    def __enter__(self) -> LocalDeployment:
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        missing = [str(s) for s in self.sites if not s.is_dir()]
        if missing:
            raise FedadError(f"site data root(s) not found: {', '.join(missing)}")
        if self.secure and not self.ca.is_file():
            make_certificates(self.certs, ["localhost", "127.0.0.1"], len(self.sites))
        if self.secure:
            keys = [self.certs / f"supernode-{i}.{ext}" for i in range(len(self.sites))
                    for ext in ("key", "pub")]
            if [k for k in keys if not k.is_file()]:
                raise FedadError(f"{self.certs} lacks SuperNode keys for {len(self.sites)} "
                                 f"sites; run fedad-certs --out {self.certs} "
                                 f"--supernodes {len(self.sites)} --force")
        cmd = ["flower-superlink", "--host", "127.0.0.1", "--port", str(self.port),
               "--isolation", self.isolation]
        if self.secure:
            cmd += ["--ssl-ca-certfile", str(self.ca),
                    "--ssl-certfile", str(self.certs / "server.pem"),
                    "--ssl-keyfile", str(self.certs / "server.key"), "--enable-supernode-auth"]
        else:
            cmd += ["--insecure"]
        self.superlink = ManagedProcess("flower-superlink", cmd, self.env,
                                        self.work / "logs" / "superlink.log").start()
        scheme = "https" if self.secure else "http"
        self.superlink.wait_http(f"{scheme}://{self.address}/health", self.startup_timeout,
                                 self.ca if self.secure else None)
        write_connections(self.home, [Connection(CONNECTION, self.address,
                                                 str(self.ca) if self.secure else None)],
                          default=CONNECTION)
        if self.isolation == "process":  # runs the ServerApp; TLS like any SuperLink client
            self.superexecs.append(self._superexec("superexec-serverapp", self.address,
                                                   self._tls_client()))
        for i in range(len(self.sites)):
            key = None
            if self.secure:
                key = self.certs / f"supernode-{i}.key"
                self.register(self.certs / f"supernode-{i}.pub")
            runtime = free_port()  # the node's Runtime API, where its ClientApps connect
            self.supernodes.append(self.start_supernode(i, key, runtime_port=runtime))
            if self.isolation == "process":  # plain HTTP on localhost, like in compose
                self.superexecs.append(self._superexec(f"superexec-supernode-{i}",
                                                       f"127.0.0.1:{runtime}", ["--insecure"]))

    def register(self, public_key: Path) -> None:
        """``flwr supernode register <key>``: admit a SuperNode's public key.

        Raises:
            FedadError: Flower refused the key (its message is included).
        """
        res = subprocess.run(["flwr", "supernode", "register", str(public_key), CONNECTION],
                             env=self.env, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            raise FedadError(f"flwr supernode register {public_key} failed: "
                             f"{(res.stdout + res.stderr).strip()[-500:]}")
        log.info("registered SuperNode key %s", public_key)

    def start_supernode(self, i: int, private_key: Path | None, name: str | None = None,
                        runtime_port: int | None = None) -> ManagedProcess:
        """SuperNode ``i`` on site ``i``'s data root (``private_key`` for authentication),
        its Runtime API on ``runtime_port`` (a free one if None). The caller owns the
        returned process: only those :meth:`__enter__` starts are tracked and stopped."""
        name = name or f"supernode-{i}"
        node_config = (f'data-root="{self.sites[i]}" partition-id={i} '
                       f'cache-dir="{self.work / "cache" / name}"')
        cmd = ["flower-supernode", "--superlink", self.address, "--host", "127.0.0.1",
               "--port", str(runtime_port or free_port()), "--isolation", self.isolation,
               "--node-config", node_config, *self._tls_client()]
        if private_key is not None:
            cmd += ["--auth-supernode-private-key", str(private_key)]
        return ManagedProcess(name, cmd, self.env, self.work / "logs" / f"{name}.log").start()

    def _superexec(self, name: str, runtime: str, tls: list[str]) -> ManagedProcess:
        cmd = ["flower-superexec", "--runtime-api-address", runtime, *tls]
        return ManagedProcess(name, cmd, self.env, self.work / "logs" / f"{name}.log").start()

    def run(self, cfg: RunConfig, app_dir: Path = PROJECT) -> tuple[str | None, str]:
        """``flwr run`` the app with ``cfg`` (its ``num_clients`` set to the number of sites,
        its ``output_dir`` under ``work`` unless absolute); returns ``(run id, status)``."""
        cfg.num_clients = len(self.sites)
        out = Path(cfg.output_dir)
        cfg.output_dir = str(out if out.is_absolute() else self.work / out)
        toml = write_run_config(cfg, self.work / "run_config.toml")
        run_id = flwr_run(app_dir, CONNECTION, toml, self.env,
                          pending_timeout=cfg.pending_timeout)
        if run_id is None:
            return None, "not started"
        return run_id, run_status(run_id, CONNECTION, self.env)

    def stop(self) -> None:
        """Stop the SuperExecs, the SuperNodes, then the SuperLink (each with all it
        spawned)."""
        for proc in [*self.superexecs, *self.supernodes, self.superlink]:
            if proc is not None:
                proc.stop()
        self.superexecs, self.supernodes, self.superlink = [], [], None

    @property
    def processes(self) -> list[ManagedProcess]:
        """Every process this deployment started and has not stopped."""
        return [p for p in [self.superlink, *self.supernodes, *self.superexecs] if p]

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="fedad-deploy-local",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=Path, nargs="+", required=True,
                        help="one data root (MVTec layout) per SuperNode")
    parser.add_argument("--work", type=Path, default=Path("outputs/deployment"))
    parser.add_argument("--secure", action="store_true", help="TLS + SuperNode authentication")
    parser.add_argument("--isolation", choices=("subprocess", "process"), default="subprocess")
    parser.add_argument("overrides", nargs="*", help="RunConfig overrides")
    args = parser.parse_args(argv)
    setup_logging()
    exit_on_sigterm()
    try:
        cfg = compose(["dataset.name=mvtec", *args.overrides])
        with LocalDeployment(args.work, args.sites, secure=args.secure,
                             isolation=args.isolation) as dep:
            run_id, status = dep.run(cfg)
    except FedadError as exc:
        print(f"fedad-deploy-local: error: {exc}", file=sys.stderr)
        return 2
    if status != "finished:completed":
        log.error("run %s ended as %s; logs in %s", run_id, status, args.work / "logs")
        return 1
    log.info("run %s completed; results in %s", run_id, Path(cfg.output_dir) / f"run-{run_id}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
