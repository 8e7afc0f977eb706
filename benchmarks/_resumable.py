"""A benchmark row as one in-process run of the engine (the same sites, messages and
aggregation as a Flower run, :mod:`fedad.federation.in_process`) in its own folder, resumed
from its last checkpointed round when the script is run again, and read back when finished."""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from benchmarks._common import RESULTS, command_line, machine
from fedad.config.schema import RunConfig
from fedad.errors import ConfigError
from fedad.federation.checkpoint import load_server
from fedad.federation.in_process import InProcess
from fedad.federation.run import federate, run_folder
from partitions import partition_nodes


def finished(folder: Path, cfg: RunConfig) -> bool:
    """Whether ``folder`` holds ``cfg``'s run with its last round evaluated."""
    path = folder / "rounds.json"
    if not path.is_file():
        return False
    rounds = json.loads(path.read_text()).get("rounds", [])
    return bool(rounds) and rounds[-1]["round"] == cfg.train.rounds and bool(
        rounds[-1].get("evaluate"))


def run_row(cfg: RunConfig, folder: Path) -> dict:
    """The row's ``rounds.json`` (its run resumed from the checkpoint, or read back when
    finished)."""
    if not finished(folder, cfg):
        ckpt = None
        try:
            load_server(folder)
        except ConfigError:  # nothing checkpointed yet: from the start
            pass
        else:
            cfg = copy.deepcopy(cfg)
            cfg.resume = str(folder)
            folder, ckpt = run_folder(cfg, folder.parent, folder.name)
        transport = InProcess(cfg, partition_nodes(cfg))
        federate(cfg, transport, transport.keys, folder, ckpt)
    return json.loads((folder / "rounds.json").read_text())


def row_parser(doc: str, rows: list[str], work: str, name: str) -> argparse.ArgumentParser:
    """The arguments every row benchmark takes: the data, the rows, where runs and results
    go, and ``key=value`` overrides after ``--``."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--root", default=None, help="dataset root (MTD's published layout)")
    p.add_argument("--dataset", default="mtd", choices=["mtd", "textures"])
    p.add_argument("--rows", nargs="+", default=list(rows), choices=list(rows))
    p.add_argument("--work", type=Path, default=Path(work))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--name", default=name)
    return p


def base_flat(p: argparse.ArgumentParser, args: argparse.Namespace, defaults: dict) -> dict:
    """``defaults`` (the method's a priori choices, dotted keys), the dataset of ``args``,
    then its overrides."""
    flat = {**defaults, "dataset.name": args.dataset}
    if args.dataset == "mtd":
        if not args.root:
            p.error("--root is needed for --dataset mtd")
        flat["dataset.root"] = str(Path(args.root).resolve())
    for o in args.overrides:
        if "=" not in o:
            p.error(f"override {o!r} is not key=value")
        k, v = o.split("=", 1)
        flat[k] = v
    return flat


def results_payload(args: argparse.Namespace) -> dict:
    """The results file's payload so far (rows of earlier runs kept), with this machine
    and this command added."""
    path = args.out / f"{args.name}.json"
    payload = json.loads(path.read_text()) if path.is_file() else {}
    payload.update({"dataset": args.dataset, "machine": machine()})
    payload.setdefault("rows", {})
    payload["commands"] = list(dict.fromkeys([*payload.get("commands", []), command_line()]))
    return payload


def centralized_of(cfg: RunConfig, sites: int) -> RunConfig:
    """The centralized row of a step-budgeted detector beside a federated one of ``sites``
    sites: one site with every training image, taking the same optimiser steps in the same
    rounds with batches ``sites`` times as large (``train.batch_size``,
    ``ddpm.batch_size``): FedAvg's round averages ``sites`` updates of a batch each, so the
    two rows see as many images per step and spend the same compute; federated minus
    centralized then measures federation, not budget."""
    from dataclasses import replace

    from fedad.detectors.registry import resolve
    from fedad.federation.centralized import centralized_config

    cfg = resolve(centralized_config(cfg))
    cfg.train = replace(cfg.train, batch_size=cfg.train.batch_size * sites)
    cfg.ddpm = replace(cfg.ddpm, batch_size=cfg.ddpm.batch_size * sites)
    return cfg


def by_phase(result: dict) -> dict[str, dict]:
    """Per phase of a step-budgeted run (``rounds.json``'s ``train.phase``, in order): its
    rounds, steps, mean training loss of each round and seconds of training summed over the
    sites (the rest of the stages are reported beside them)."""
    out: dict[str, dict] = {}
    for r in result["rounds"]:
        phase = r["train"].get("phase", {}).get("name", "train")
        entry = out.setdefault(phase, {"rounds": 0, "steps": 0, "losses": [], "seconds": 0.0})
        entry["rounds"] += 1
        entry["steps"] += int(r["train"].get("phase", {}).get("steps", 0))
        entry["losses"].append(float(r["train"]["loss"]["mean"]))
        entry["seconds"] += float(r["train"]["seconds-client-sum"].get("seconds-train", 0.0))
    return out
