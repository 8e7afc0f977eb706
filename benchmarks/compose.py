"""The docker-compose deployment built and run on one host, and its FedDyMem numbers
against the same run through ``fedad-deploy-local`` (real Flower processes, no Docker).

    python benchmarks/compose.py --images fedad-flower --build-flower-images \\
        --ca /etc/ssl/certs/ca-certificates.crt

Runs ``deploy/compose_check.py`` (build, up with three sites, TLS and SuperNode
authentication, an unregistered SuperNode refused, a 2-round FedDyMem and a 1-round
PatchCore run, outputs and volumes checked, down -v), then ``fedad-deploy-local --secure
--isolation process`` on the same site folders with the same run config and seeds, and
writes ``compose.{json,md}`` to ``benchmarks/results/``. Needs a Docker engine with Compose
v2; ``.ci/run`` does not run it. ``--site-overrides`` makes other sites (e.g. an
image-level-only dataset).
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "deploy")]
from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from compose_check import base_overrides, final_means  # noqa: E402

METRICS = ("i_auroc", "p_auroc", "pro")
# The numerical stack: pinned in the app's image to this checkout's versions, so that the
# compose run and fedad-deploy-local compute with the same code (a fresh image would take
# PyPI's newest torch).
MATCH_HOST = ("torch", "torchvision", "faiss-cpu", "timm", "numpy", "scikit-learn", "scipy")


def deploy_local(check: dict, sites: Path, work: Path) -> dict:
    """The FedDyMem run of ``check`` again, through fedad-deploy-local."""
    (run,) = [r for r in check["runs"] if r.get("compare_local")]
    base = [o for o in base_overrides() if not o.startswith("output_dir=")]
    cmd = ["fedad-deploy-local", "--sites", *[str(sites / f"site-{i}") for i in range(3)],
           "--secure", "--isolation", "process", "--work", str(work),
           *base, *run["overrides"], "output_dir=out"]
    print("benchmarks/compose: " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, check=False).returncode != 0:
        raise SystemExit(f"fedad-deploy-local failed; logs in {work / 'logs'}")
    (rounds,) = sorted((work / "out").glob("run-*/rounds.json"))
    return {"command": " ".join(["fedad-deploy-local", *cmd[1:]]),
            "result": json.loads(rounds.read_text())}


def compare(compose_run: dict, local: dict) -> dict:
    """Every final and per-site metric of both runs and their largest difference."""
    rows, worst = [], 0.0
    final = local["final"]
    pairs = [("mean over sites", compose_run["final"], final_means(final))] + [
        (f"site {c}", m, final["per_client"][c]) for c, m in
        sorted(compose_run["per_client"].items())]
    for where, a, b in pairs:
        for k in METRICS:
            x, y = a.get(k), b.get(k)
            if not isinstance(x, (int, float)) or not isinstance(y, (int, float)):
                continue
            diff = abs(x - y) if not (math.isnan(x) and math.isnan(y)) else 0.0
            worst = max(worst, diff)
            rows.append({"where": where, "metric": k, "compose": x, "local": y, "diff": diff})
    return {"rows": rows, "max_abs_diff": worst}


def fmt(v: object) -> str:
    return f"{v:.4f}" if isinstance(v, float) else str(v)


def markdown(res: dict) -> str:
    check = res["check"]
    lines = ["# docker compose on one host", "",
             f"Docker engine {check.get('docker_engine')}, Compose {check.get('docker_compose')}"
             f", Flower images from `{check['images_from']}`, flwr {check['flwr_version']} in "
             "every image. " + ("**Passed.**" if res["passed"] else
                                f"**Failed** at {check.get('failed', {}).get('step')}."), "",
             "| image | size (MB) | flwr |", "|---|---|---|"]
    images = check.get("images", {})
    for name, size in images.get("size_mb", {}).items():
        lines.append(f"| `{name}` | {size:,.0f} | {images['flwr'][name]} |")
    lines += ["", "| step | s |", "|---|---|"]
    lines += [f"| {s['step']} | {s['seconds']} |" for s in check["steps"]]
    for what, b in images.get("build", {}).items():
        lines.append(f"| build: {what} | {b['build_s']} |")
    node = check.get("unknown_supernode")
    if node:
        lines += ["", f"Unregistered SuperNode ({node['key']}): exit code {node['exit_code']} "
                      f"after {node['seconds']} s, `{node['message']}`; "
                      f"{node['online_nodes_after']} nodes online after it."]
    lines += ["", "| run | status | rounds | s | " + " | ".join(METRICS) + " | per-site I-AUROC |",
              "|---|---|---|---|" + "---|" * len(METRICS) + "---|"]
    for r in check.get("runs", []):
        final = r.get("final", {})
        sites = ", ".join(f"{m['i_auroc']:.3f}" for _, m in sorted(r.get("per_client", {}).items()))
        rounds = r.get("rounds") or ["-"]
        lines.append(f"| {r['name']} ({' '.join(r['overrides'])}) | {r['status']} | "
                     f"{rounds[0]}..{rounds[-1]} | {r['seconds']} | "
                     + " | ".join(fmt(final.get(k)) for k in METRICS) + f" | {sites} |")
    if "cache_files" in check:
        lines += ["", f"Feature-cache files per site volume: {check['cache_files']}; each "
                      "`site-<i>` volume holds only `site-<i>/` (state.pt, calibration.json), "
                      "the coordinator's volume no site state."]
    cmp = res.get("comparison")
    if cmp:
        lines += ["", "FedDyMem, 2 rounds: compose vs `fedad-deploy-local` (same sites, run "
                      f"config, seeds): largest difference **{cmp['max_abs_diff']:.2e}**.", "",
                  "| where | metric | compose | deploy-local | diff |", "|---|---|---|---|---|"]
        lines += [f"| {r['where']} | {r['metric']} | {r['compose']:.6f} | {r['local']:.6f} | "
                  f"{r['diff']:.1e} |" for r in cmp["rows"]]
    lines += ["", "Commands:", "", "```", res["command"], *check["commands"]]
    if "deploy_local" in res:
        lines.append(res["deploy_local"]["command"])
    lines.append("```")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-compose-bench"))
    parser.add_argument("--images", default="flwr")
    parser.add_argument("--build-flower-images", action="store_true")
    parser.add_argument("--ca")
    parser.add_argument("--match-host", nargs="*", default=list(MATCH_HOST),
                        help="packages pinned in the app's image to this checkout's versions")
    parser.add_argument("--skip-local", action="store_true",
                        help="no fedad-deploy-local comparison")
    parser.add_argument("--site-overrides", nargs="*", default=[])
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work.resolve()
    report = work / "check.json"
    cmd = [sys.executable, str(ROOT / "deploy" / "compose_check.py"), "--work",
           str(work / "compose"), "--images", args.images, "--report", str(report)]
    cmd += ["--build-flower-images"] if args.build_flower_images else []
    cmd += ["--ca", args.ca] if args.ca else []
    cmd += ["--match-host", *args.match_host] if args.match_host else []
    cmd += ["--site-overrides", *args.site_overrides] if args.site_overrides else []
    passed = subprocess.run(cmd, check=False).returncode == 0
    check = json.loads(report.read_text())
    res = {"passed": passed, "check": check, "command": command_line(), "machine": machine()}
    if passed and not args.skip_local:
        local = deploy_local(check, work / "compose" / "sites", work / "local")
        (run,) = [r for r in check["runs"] if r.get("compare_local")]
        res["deploy_local"] = {"command": local["command"], "final": local["result"]["final"]}
        res["comparison"] = compare(run, local["result"])
    write_results(args.out, "compose", res, markdown(res))
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(main())
