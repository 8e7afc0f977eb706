"""``docker compose up`` for real, on one host: build the images, start the SuperLink, three
SuperNodes and their SuperExecs with TLS and SuperNode authentication, register the keys,
refuse a fourth SuperNode whose key is not registered, run a 2-round FedDyMem and a 1-round
PatchCore federation with ``flwr run ... --stream``, check that every site reported metrics
and kept its state in its own volume, then ``docker compose down -v``.

    python deploy/compose_check.py [--images fedad-flower --build-flower-images] \\
        [--ca /etc/ssl/certs/ca-certificates.crt] [--report compose-check.json]

Needs a Docker engine and Compose v2 (``docker compose``); not run by ``.ci/run``. It stops
at the first step that does not work with a message naming it (and the containers' logs),
and always takes the set-up down again unless ``--keep``. ``benchmarks/compose.py`` runs it
and compares the FedDyMem numbers with ``fedad-deploy-local``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
import ssl
import subprocess
import sys
import time
from contextlib import contextmanager
from importlib.metadata import version
from pathlib import Path

import httpx
from flwr.common.config import parse_config_args

from fedad.cli.certs import make_certificates
from fedad.cli.connections import Connection, write_connections
from fedad.cli.flwr_run import flwr_run, run_status
from fedad.cli.overrides import compose
from fedad.cli.processes import flower_env
from fedad.cli.sim import write_run_config
from fedad.cli.sites import make_sites

ROOT = Path(__file__).resolve().parents[1]
CONNECTION = "compose-check"
SITES = 3
APP_UID = 49999  # the user of Flower's images (and of deploy/flower/Dockerfile)
# The two runs checked; everything else from deploy/run_config.toml.
RUNS = {"feddymem": ["train.rounds=2"], "patchcore": ["detector=patchcore", "train.rounds=1"]}
REPEATED_LOCALLY = "feddymem"  # benchmarks/compose.py repeats it with fedad-deploy-local


class CheckFailed(RuntimeError):
    """A step did not work; the message says which and why."""


def sh(cmd: list[str], env: dict[str, str] | None = None, timeout: float | None = None,
       check: bool = True, what: str | None = None) -> subprocess.CompletedProcess:
    """Run ``cmd``; on failure raise :class:`CheckFailed` naming ``what`` and its output."""
    try:
        res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout,
                             check=False)
    except FileNotFoundError as exc:
        raise CheckFailed(f"{what or cmd[0]}: {cmd[0]} not found") from exc
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{what or ' '.join(cmd)}: no answer in {timeout:.0f}s") from exc
    if check and res.returncode != 0:
        out = (res.stdout + res.stderr).strip()[-2000:]
        raise CheckFailed(f"{what or ' '.join(cmd)} failed (exit {res.returncode}):\n{out}")
    return res


def base_overrides() -> list[str]:
    """``deploy/run_config.toml`` as ``key=value`` overrides (what every run starts from)."""
    return [f"{k}={v}" for k, v in parse_config_args(
        [str(ROOT / "deploy" / "run_config.toml")]).items()]


def final_means(final: dict) -> dict[str, float]:
    """The mean over sites of each final metric of a ``rounds.json`` (``{"mean", "std"}``)."""
    return {k: v["mean"] for k, v in final.items()
            if isinstance(v, dict) and isinstance(v.get("mean"), (int, float))}


def check_run(entry: dict, out: Path, caches: list[int]) -> None:
    """Check one run's copied outputs (``out/server`` the coordinator's volume,
    ``out/site-<i>`` site i's) and add its metrics and state placement to ``entry``."""
    run = f"run-{entry['run_id']}"
    rounds = out / "server" / run / "rounds.json"
    if not rounds.is_file():
        raise CheckFailed(f"{entry['name']}: {rounds} was not written")
    result = json.loads(rounds.read_text())
    final = result["final"]
    per_client = final.get("per_client", {})
    if sorted(per_client) != [str(i) for i in range(SITES)]:
        raise CheckFailed(f"{entry['name']}: metrics from sites {sorted(per_client)}, "
                          f"not all of {SITES}")
    # image-level-only data has no pixel metrics: those present must lie in [0, 1]
    bad = {c: m for c, m in per_client.items()
           if not 0.0 <= m.get("i_auroc", -1.0) <= 1.0
           or not all(0.0 <= m[k] <= 1.0 for k in ("p_auroc", "pro")
                      if isinstance(m.get(k), (int, float)) and not math.isnan(m[k]))}
    if bad:
        raise CheckFailed(f"{entry['name']}: metrics out of [0, 1]: {bad}")
    entry["rounds"] = [r["round"] for r in result["rounds"]]
    entry["final"] = final_means(final)
    entry["per_client"] = per_client
    entry["rejected"] = result.get("rejected", [])
    # each site's state only in its own volume; none of it in the coordinator's
    placement = {}
    for i in range(SITES):
        held = sorted(p.name for p in (out / f"site-{i}" / run).glob("site-*"))
        placement[f"site-{i} volume"] = held
        if held != [f"site-{i}"] or not (out / f"site-{i}" / run / f"site-{i}" /
                                         "state.pt").is_file():
            raise CheckFailed(f"{entry['name']}: volume site-{i} holds {held}, "
                              f"not only site-{i}/ with its state.pt")
    states = sorted(str(p.relative_to(out / "server"))
                    for p in (out / "server" / run).rglob("state.pt"))
    placement["coordinator volume: state.pt files"] = states
    if states:
        raise CheckFailed(f"{entry['name']}: site state in the coordinator's volume: "
                          f"{states}")
    if min(caches) == 0:
        raise CheckFailed(f"a site's feature cache is empty: {caches}")
    entry["state_placement"] = placement


class Check:
    """One compose project on this host and the record of what was measured."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = args.work.resolve()
        self.certs = self.work / "certificates"
        self.sites = self.work / "sites"
        self.flwr_version = args.flwr_version or version("flwr")
        self.env = flower_env(self.work / ".flwr")
        self.env.update({
            "FLWR_IMAGES": args.images, "FLWR_VERSION": self.flwr_version,
            "CERTS_DIR": str(self.certs), "SUPERLINK_HOST_PORT": str(args.port),
            **{f"SITE_{i}_DATA": str(self.sites / f"site-{i}") for i in range(SITES)}})
        if args.ca:
            self.env["BUILD_CA_BUNDLE"] = str(Path(args.ca).resolve())
        # the app's image pinned to this checkout's packages: same numbers as fedad-deploy-local
        self.pins = {pkg: version(pkg) for pkg in args.match_host}
        self.env["PIP_CONSTRAINTS"] = " ".join(f"{k}=={v}" for k, v in self.pins.items())
        self.compose = ["docker", "compose", "--project-directory", str(ROOT), "-f",
                        str(ROOT / "docker-compose.yml"), "-p", args.project]
        self.report: dict = {"project": args.project, "flwr_version": self.flwr_version,
                             "images_from": args.images, "steps": [], "commands": []}

    # -- helpers -------------------------------------------------------------------------
    @contextmanager
    def step(self, name: str):
        print(f"compose_check: {name} ...", flush=True)
        start = time.monotonic()
        try:
            yield
        except CheckFailed as exc:
            self.report["failed"] = {"step": name, "error": str(exc)}
            raise CheckFailed(f"step '{name}': {exc}") from None
        seconds = round(time.monotonic() - start, 1)
        self.report["steps"].append({"step": name, "seconds": seconds})
        print(f"compose_check: {name}: ok ({seconds} s)", flush=True)

    def dc(self, *args: str, timeout: float | None = 600, check: bool = True,
           what: str | None = None) -> subprocess.CompletedProcess:
        cmd = [*self.compose, *args]
        self.report["commands"].append("docker compose -p " + self.args.project + " "
                                       + " ".join(args))
        return sh(cmd, env=self.env, timeout=timeout, check=check,
                  what=what or f"docker compose {args[0]}")

    def logs(self, service: str, tail: int = 40) -> str:
        res = self.dc("logs", "--no-color", "--tail", str(tail), service, check=False)
        return (res.stdout + res.stderr).strip()

    def services(self) -> dict[str, dict]:
        """Service -> its container's state (``docker compose ps -a``)."""
        res = self.dc("ps", "-a", "--format", "json", what="docker compose ps")
        rows = [json.loads(line) for line in res.stdout.splitlines() if line.strip()]
        if len(rows) == 1 and isinstance(rows[0], list):  # older Compose: one JSON array
            rows = rows[0]
        return {r["Service"]: r for r in rows}

    def package_versions(self, image: str, packages: list[str]) -> dict[str, str]:
        """Package -> its version installed in ``image`` (one container)."""
        res = sh(["docker", "run", "--rm", "--entrypoint", "python", image, "-c",
                  "import sys; from importlib.metadata import version; "
                  "print(' '.join(version(p) for p in sys.argv[1:]))", *packages],
                 timeout=120, what=f"reading package versions in {image}")
        return dict(zip(packages, res.stdout.split(), strict=True))

    # -- steps ---------------------------------------------------------------------------
    def ca_baked(self, images: list[str]) -> dict[str, dict]:
        """Image -> what of the build's CA bundle (a secret) it holds: ``PIP_CERT`` set,
        the secret's file, and how many of the bundle's certificates its own CA store
        lacks (a bundle that adds certificates, a proxy's say, shows them missing; a
        bundle equal to the image's store cannot tell). Fails on the first two."""
        pem = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)
        bundle = set(pem.findall(Path(self.env["BUILD_CA_BUNDLE"]).read_text()))
        found = {}
        for image in images:
            res = sh(["docker", "run", "--rm", "--entrypoint", "sh", image, "-c",
                      "cat /etc/ssl/certs/ca-certificates.crt; echo; env; "
                      "test -e /run/secrets/ca && echo SECRET-FILE-PRESENT"], check=False,
                     timeout=120, what=f"reading {image}'s CA store")
            found[image] = {"pip_cert_set": "PIP_CERT=" in res.stdout,
                            "secret_file": "SECRET-FILE-PRESENT" in res.stdout,
                            "bundle_certificates_not_in_store":
                                f"{len(bundle - set(pem.findall(res.stdout)))} of {len(bundle)}"}
        baked = {i: f for i, f in found.items() if f["pip_cert_set"] or f["secret_file"]}
        if baked:
            raise CheckFailed(f"the build's CA bundle is left in {baked}")
        return found

    def preflight(self) -> None:
        res = sh(["docker", "version", "--format", "{{.Server.Version}}"], check=False,
                 timeout=30, what="docker version")
        if res.returncode != 0:
            raise CheckFailed("no Docker engine answers (install docker.io and start "
                              f"dockerd): {res.stderr.strip()[-300:]}")
        self.report["docker_engine"] = res.stdout.strip()
        res = sh(["docker", "compose", "version", "--short"], check=False, timeout=30)
        if res.returncode != 0:
            raise CheckFailed("Compose v2 (`docker compose`) is missing; Debian bookworm's "
                              "docker-compose 1.x cannot read this compose file")
        self.report["docker_compose"] = res.stdout.strip()
        if self.args.images == "fedad-flower" and not self.args.build_flower_images:
            missing = [t for t in ("superlink", "supernode", "superexec")
                       if sh(["docker", "image", "inspect",
                              f"fedad-flower/{t}:{self.flwr_version}"],
                             check=False).returncode]
            if missing:
                raise CheckFailed(f"local Flower image(s) {missing} at {self.flwr_version} "
                                  "not built: pass --build-flower-images or run "
                                  "deploy/build_flower_images.sh")
        if self.work.exists() and any(self.work.iterdir()) and not self.args.reuse_work:
            raise CheckFailed(f"{self.work} is not empty (pass --reuse-work, or remove it)")

    def build(self) -> None:
        images = {}
        if self.args.build_flower_images:
            cmd = [str(ROOT / "deploy" / "build_flower_images.sh"), "--version",
                   self.flwr_version, *(["--ca", self.env["BUILD_CA_BUNDLE"]]
                                        if "BUILD_CA_BUNDLE" in self.env else [])]
            self.report["commands"].append(" ".join(cmd))
            start = time.monotonic()
            sh(cmd, timeout=3600, what="deploy/build_flower_images.sh")
            images["flower (superlink, supernode, superexec)"] = {
                "build_s": round(time.monotonic() - start, 1)}
        start = time.monotonic()
        self.dc("build", timeout=3600, what="building the app's image (Dockerfile)")
        images["app"] = {"build_s": round(time.monotonic() - start, 1)}
        app = f"fedad-superexec:{self.flwr_version}"
        names = [*(f"{self.args.images}/{t}:{self.flwr_version}"
                   for t in ("superlink", "supernode", "superexec")), app]
        sizes, versions, found = {}, {}, {}
        for image in names:
            res = sh(["docker", "image", "inspect", "-f", "{{.Size}}", image],
                     what=f"inspecting {image}")
            sizes[image] = round(int(res.stdout.strip()) / 1e6, 1)
            extra = list(self.pins) if image == app else []
            installed = self.package_versions(image, ["flwr", *extra])
            versions[image] = installed.pop("flwr")
            found.update(installed)
        self.report["images"] = {"build": images, "size_mb": sizes, "flwr": versions}
        if self.pins:
            self.report["images"]["app_packages"] = found
            if found != self.pins:
                raise CheckFailed(f"{app} has {found}, not this checkout's {self.pins}")
        if "BUILD_CA_BUNDLE" in self.env:
            self.report["images"]["build_ca_in_image"] = self.ca_baked(names)
        wrong = {i: v for i, v in versions.items() if v != self.flwr_version}
        if wrong:
            raise CheckFailed(f"not every image runs flwr {self.flwr_version} (as the app "
                              f"here): {wrong}")

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        if not (self.sites / "site-0").is_dir():
            make_sites(list(self.args.site_overrides), self.sites, SITES)
        if not (self.certs / "ca.crt").is_file():
            # a fourth key pair for the SuperNode that is never registered
            make_certificates(self.certs, ["superlink", "localhost", "127.0.0.1"],
                              supernodes=SITES + 1)
        if os.geteuid() == 0:
            for path in [self.certs, *self.certs.rglob("*")]:
                os.chown(path, APP_UID, APP_UID)
        elif self.certs.stat().st_uid != APP_UID:
            raise CheckFailed(f"{self.certs} must be readable by the containers' user "
                              f"{APP_UID}: sudo chown -R {APP_UID}:{APP_UID} {self.certs}")
        write_connections(self.work / ".flwr", [Connection(
            CONNECTION, f"127.0.0.1:{self.args.port}", str(self.certs / "ca.crt"))],
            default=CONNECTION)

    def up(self) -> None:
        self.dc("up", "-d", "--no-build", timeout=600, what="docker compose up")
        url = f"https://127.0.0.1:{self.args.port}/health"
        tls = ssl.create_default_context(cafile=str(self.certs / "ca.crt"))
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(url, timeout=2.0, verify=tls).is_success:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise CheckFailed(f"the SuperLink did not answer {url} in 120 s:\n"
                                  + self.logs("superlink"))
            time.sleep(1.0)
        for i in range(SITES):
            key = self.certs / f"supernode-{i}.pub"
            sh(["flwr", "supernode", "register", str(key), CONNECTION], env=self.env,
               timeout=60, what=f"flwr supernode register {key.name}")
            self.report["commands"].append(f"flwr supernode register {key.name} {CONNECTION}")
        nodes = self.wait_nodes(SITES, timeout=180)
        self.report["supernodes"] = nodes
        self.assert_running()

    def online_nodes(self) -> list[dict]:
        res = sh(["flwr", "supernode", "list", CONNECTION, "--format", "json"],
                 env=self.env, timeout=60, what="flwr supernode list")
        nodes = json.loads(res.stdout).get("nodes", [])
        return [n for n in nodes if str(n.get("status", "")).lower() == "online"]

    def wait_nodes(self, n: int, timeout: float) -> list[dict]:
        deadline = time.monotonic() + timeout
        while True:
            online = self.online_nodes()
            if len(online) >= n:
                return online
            if time.monotonic() > deadline:
                logs = "\n".join(self.logs(f"supernode-{i}", 15) for i in range(SITES))
                raise CheckFailed(f"{len(online)} of {n} SuperNodes online after "
                                  f"{timeout:.0f} s:\n{logs}")
            time.sleep(2.0)

    def assert_running(self) -> None:
        states = self.services()
        down = {s: r.get("State") for s, r in states.items() if r.get("State") != "running"}
        if down:
            logs = "\n".join(f"--- {s}\n{self.logs(s, 20)}" for s in down)
            raise CheckFailed(f"container(s) not running: {down}\n{logs}")

    def refuse_unknown(self) -> None:
        """A fourth SuperNode with a key the SuperLink does not know must be refused."""
        cmd = ["run", "--rm", "--no-deps", "-T", "supernode-0",
               "--superlink", "superlink:8000", "--root-certificates",
               "/app/certificates/ca.crt", "--auth-supernode-private-key",
               f"/app/certificates/supernode-{SITES}.key", "--isolation", "process",
               "--node-config", f"partition-id={SITES}"]
        start = time.monotonic()
        res = self.dc(*cmd, timeout=180, check=False, what="the unregistered SuperNode")
        seconds = round(time.monotonic() - start, 1)
        out = (res.stdout + res.stderr).strip()
        refused = res.returncode != 0 and "Failed to initialize the connection" in out
        online = len(self.online_nodes())
        self.report["unknown_supernode"] = {
            "key": f"supernode-{SITES}.key (not registered)", "exit_code": res.returncode,
            "seconds": seconds, "message": next(
                (line.strip() for line in out.splitlines() if "Failed to" in line), out[-300:]),
            "online_nodes_after": online}
        if not refused or online != SITES:
            raise CheckFailed(f"the SuperNode with an unregistered key was not refused "
                              f"(exit {res.returncode}, {online} nodes online):\n{out[-1500:]}")

    def run(self, name: str, overrides: list[str]) -> dict:
        cfg = compose([*base_overrides(), *self.args.set, *overrides])
        toml = write_run_config(cfg, self.work / f"run_config-{name}.toml")
        self.report["commands"].append(
            f"flwr run . {CONNECTION} --stream --run-config {toml.name}  # {' '.join(overrides)}")
        start = time.monotonic()
        run_id = flwr_run(ROOT, CONNECTION, toml, self.env, pending_timeout=300)
        status = run_status(run_id, CONNECTION, self.env) if run_id else "not started"
        seconds = round(time.monotonic() - start, 1)
        entry = {"name": name, "overrides": [*self.args.set, *overrides], "run_id": run_id,
                 "status": status, "seconds": seconds,
                 "compare_local": name == REPEATED_LOCALLY}
        self.report.setdefault("runs", []).append(entry)
        if status != "finished:completed":
            raise CheckFailed(f"run {name} ({run_id}) ended as {status}:\n"
                              + self.logs("superexec-serverapp", 60))
        return entry

    def collect(self) -> None:
        out = self.work / "outputs"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        self.dc("cp", "superexec-serverapp:/app/outputs", str(out / "server"))
        for i in range(SITES):
            self.dc("cp", f"superexec-clientapp-{i}:/app/outputs", str(out / f"site-{i}"))
        caches = []
        for i in range(SITES):
            res = self.dc("exec", "-T", f"superexec-clientapp-{i}", "sh", "-c",
                          "find /app/cache -type f | wc -l", what=f"counting cache-{i}")
            caches.append(int(res.stdout.strip() or 0))
        self.report["cache_files"] = caches
        for entry in self.report.get("runs", []):
            check_run(entry, out, caches)

    def down(self) -> None:
        self.dc("down", "-v", "--remove-orphans", timeout=300, what="docker compose down -v")
        res = sh(["docker", "volume", "ls", "-q", "--filter",
                  f"label=com.docker.compose.project={self.args.project}"])
        left = res.stdout.split()
        self.report["volumes_left"] = left
        if left:
            raise CheckFailed(f"volumes left after down -v: {left}")

    def main(self) -> None:
        with self.step("preflight (engine, Compose v2)"):
            self.preflight()
        with self.step("build the images"):
            self.build()
        with self.step("sites, certificates and keys"):
            self.prepare()
        try:
            with self.step("up (TLS, SuperNode authentication, keys registered)"):
                start = time.monotonic()
                self.up()
                self.report["up_s"] = round(time.monotonic() - start, 1)
            with self.step("a SuperNode with an unregistered key is refused"):
                self.refuse_unknown()
            for name, overrides in RUNS.items():
                with self.step(f"run {name}"):
                    self.run(name, overrides)
                    self.assert_running()
            with self.step("copy the outputs and check every site and volume"):
                self.collect()
        finally:
            if not self.args.keep:
                with self.step("down -v"):
                    self.down()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="compose_check", description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("outputs/compose-check"),
                        help="sites, certificates, Flower home and copied outputs")
    parser.add_argument("--images", default=os.environ.get("FLWR_IMAGES", "flwr"),
                        help="where Flower's images come from: flwr (Docker Hub) or "
                             "fedad-flower (deploy/build_flower_images.sh)")
    parser.add_argument("--build-flower-images", action="store_true",
                        help="build the local Flower images first (implies "
                             "--images fedad-flower)")
    parser.add_argument("--flwr-version", help="default: the flwr installed here")
    parser.add_argument("--ca", help="CA bundle the builds' downloads need (build secret)")
    parser.add_argument("--match-host", nargs="*", default=[], metavar="PACKAGE",
                        help="pin these packages in the app's image to the versions "
                             "installed here (PIP_CONSTRAINTS), e.g. torch torchvision")
    parser.add_argument("--port", type=int, default=8000, help="host port of the SuperLink")
    parser.add_argument("--project", default="fedad-check", help="compose project name")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                        help="RunConfig overrides for both runs")
    parser.add_argument("--site-overrides", nargs="*", default=[],
                        help="fedad-sites overrides (dataset.*)")
    parser.add_argument("--reuse-work", action="store_true")
    parser.add_argument("--keep", action="store_true", help="leave the containers up")
    parser.add_argument("--report", type=Path, help="write what was measured (JSON)")
    args = parser.parse_args(argv)
    if args.build_flower_images:
        args.images = "fedad-flower"
    check = Check(args)
    code = 0
    try:
        check.main()
        print("compose_check: passed", flush=True)
    except CheckFailed as exc:
        print(f"compose_check: FAILED at {exc}", file=sys.stderr, flush=True)
        code = 1
    if args.report:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        args.report.write_text(json.dumps(check.report, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
