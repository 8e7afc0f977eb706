"""A simulation over an existing Ray cluster (``fedad-sim ray_address=...``) against the same
run on the local Ray that Flower starts: equal results, and their wall times.

    python benchmarks/ray_cluster.py [--clients 2] [--work DIR] [--out DIR]

Starts a two-node Ray cluster on this machine (a head and a worker, ``ray start``, one CPU
each: each simulated client needs a node's whole CPU, so the clients are spread over both
nodes), runs the tiny embedded-textures federation once on it and once on the local Ray,
stops the cluster, and compares every client's final metrics. Writes ``ray_cluster.json``
and ``ray_cluster.md`` to ``--out`` (default ``benchmarks/results/``). On real machines the
same two ``ray start`` commands run on the head and on each worker (docs/running.md).
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ray(*args: str) -> None:
    subprocess.run([str(BIN / "ray"), *args], check=True, capture_output=True, timeout=300)


def nodes(address: str) -> list[dict]:
    code = (f"import json, ray; ray.init(address={address!r}, logging_level='ERROR'); "
            "print(json.dumps([{'alive': n['Alive'], 'cpu': n['Resources'].get('CPU', 0)} "
            "for n in ray.nodes()]))")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=120)
    return json.loads(res.stdout.strip().splitlines()[-1])


def run(out: Path, clients: int, *extra: str) -> dict:
    cmd = [str(BIN / "fedad-sim"), "train.rounds=2", f"num_clients={clients}",
           "client_cpus=1", "partition.min_samples=1", "dataset.texture_train_per_type=4",
           "dataset.texture_test_normal_per_type=1", "dataset.texture_test_anomalous_per_type=1",
           "dataset.image_size=64", "examples=0", f"hydra.run.dir={out}", *extra]
    start = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - start
    if res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{res.stdout[-2000:]}{res.stderr[-2000:]}")
    (rounds,) = out.glob("run-*/rounds.json")
    flower = (out / "flower.log").read_text()
    return {"wall_s": round(wall, 1), "final": json.loads(rounds.read_text())["final"],
            "actors": flower.count("Constructed ActorPool"), "command": " ".join(cmd[1:])}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=2)
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="fedad-ray-"))
    port = free_port()
    address = f"127.0.0.1:{port}"
    ray("start", "--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false",
        "--disable-usage-stats")
    try:
        ray("start", f"--address={address}", "--num-cpus=1", "--disable-usage-stats")
        cluster_nodes = nodes(address)
        on_cluster = run(work / "cluster", args.clients, f"ray_address={address}")
    finally:
        ray("stop", "--force")
    local = run(work / "local", args.clients)
    same = on_cluster["final"]["per_client"] == local["final"]["per_client"]
    payload = {"command": command_line(), "machine": machine(), "nodes": cluster_nodes,
               "cluster": on_cluster, "local": local, "equal": same}
    lines = [f"A {args.clients}-client FedDyMem run (embedded textures, 64 px, 2 rounds) over a "
             f"two-node Ray cluster on this machine ({len(cluster_nodes)} nodes, "
             f"{sum(n['cpu'] for n in cluster_nodes):g} CPUs, started with `ray start`) "
             "and on the local Ray Flower starts.", "",
             "| where | wall s | I-AUROC (mean over clients) |", "|---|---|---|"]
    for name, r in (("Ray cluster (`ray_address=...`)", on_cluster), ("local Ray", local)):
        lines.append(f"| {name} | {r['wall_s']} | {r['final']['i_auroc']['mean']:.4f} |")
    lines += ["", f"Every client's final metrics equal: {'yes' if same else 'NO'}.", "",
              f"Command: `{payload['command']}`"]
    write_results(args.out, "ray_cluster", payload, "\n".join(lines))
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
