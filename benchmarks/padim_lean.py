"""PaDiM's upload against its quality: MB a site sends per round, and I-AUROC / P-AUROC /
PRO, for leaner statistics (issue 54 item 3).

    python benchmarks/padim_lean.py --root ../shared/data/mtd [--only NAME ...]
        [--work DIR] [--out DIR] [key=value ...]

Every variant (:data:`VARIANTS`, fixed before any run) is one federated PaDiM run in one
process (``_inprocess.run_in_process``: 5 sites, Dirichlet alpha 0.1, partition seed 0, the
engine's uploads, checks and exact merge), scored on the validation split (held-out normals
and one synthetic defect each) and on the test set. The levers: the upload's float type
(``padim.upload_dtype``; the server combines in float64 either way), the random channel
subset (``padim.channels``: the scatter grows with its square) and a coarser grid of
Gaussians (``padim.strides=[8,16]``: the stride-4 level left out, so 28 x 28 positions at
224 px, the map upsampled as before). The MB column is what one site uploads, counted from
the summary it sends.

The lean default is chosen on validation by a rule fixed here: the smallest upload whose
validation score is within :data:`SLACK` of the full statistics' (float64, 100 channels,
strides 4/8/16). Finished runs in ``--work`` are reused. Writes ``padim_lean.{json,md}`` to
``--out`` (default ``benchmarks/results/``). Needs no masks (image-level-only data gives
I-AUROC and the image-level validation).
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import RESULTS, command_line, machine, write_results  # noqa: E402
from _inprocess import run_in_process  # noqa: E402

from fedad.cli.overrides import compose  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
SLACK = 0.003  # validation score a lean variant may lose against the full statistics
FULL = "float64, 100 channels, strides 4/8/16"
PUBLISHED = ["padim.strides=[4,8,16]"]  # every variant names its layout (not the default)
VARIANTS: dict[str, list[str]] = {
    FULL: [*PUBLISHED, "padim.upload_dtype=float64"],
    "float32": [*PUBLISHED, "padim.upload_dtype=float32"],
    "float32, 70 channels": [*PUBLISHED, "padim.upload_dtype=float32", "padim.channels=70"],
    "float32, 50 channels": [*PUBLISHED, "padim.upload_dtype=float32", "padim.channels=50"],
    "float32, 35 channels": [*PUBLISHED, "padim.upload_dtype=float32", "padim.channels=35"],
    "float32, strides 8/16": ["padim.upload_dtype=float32", "padim.strides=[8,16]"],
    "float32, strides 8/16, 50 channels": ["padim.upload_dtype=float32",
                                           "padim.strides=[8,16]", "padim.channels=50"],
}


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def run_one(work: Path, name: str, base: list[str]) -> dict:
    every = [*base, *VARIANTS[name]]
    path = work / f"{slug(name)}.json"
    if path.is_file() and json.loads(path.read_text()).get("overrides") == every:
        return json.loads(path.read_text())
    log.info("== %s", name)
    r = run_in_process(compose(every), also_last=False)
    r["overrides"] = every
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(r, indent=1))
    return r


def choose(runs: dict) -> str | None:
    """The rule: the smallest upload within SLACK of the full statistics' validation."""
    if FULL not in runs:
        return None
    ref = runs[FULL]["history"][-1]["val_score"]
    ok = [n for n, r in runs.items() if r["history"][-1]["val_score"] >= ref - SLACK]
    return min(ok, key=lambda n: runs[n]["upload_bytes_per_client"])


def markdown(payload: dict) -> str:
    runs = payload["runs"]
    full = runs.get(FULL)
    lines = ["Federated PaDiM (5 sites, Dirichlet alpha 0.1, partition seed 0; 224 px, Lite0; "
             "in one process) with leaner statistics. MB: one site's upload per round. "
             "Validation: held-out normals and one synthetic defect each, (image + pixel "
             "AUROC) / 2.", "",
             "| variant | MB / site | share of full | validation | I-AUROC | P-AUROC | PRO |",
             "|---|---|---|---|---|---|---|"]
    for name, r in runs.items():
        t = r["test"]
        mb = r["upload_bytes_per_client"] / 1e6
        share = (f"{r['upload_bytes_per_client'] / full['upload_bytes_per_client']:.3f}"
                 if full else "-")
        cells = [f"{t[k]:.4f}" if k in t else "n/a" for k in ("i_auroc", "p_auroc", "pro")]
        lines.append(f"| {name} | {mb:.1f} | {share} | {r['history'][-1]['val_score']:.4f} | "
                     + " | ".join(cells) + " |")
    chosen = choose(runs)
    lines += ["", f"Rule, fixed before any run: the smallest upload whose validation score "
              f"is within {SLACK} of the full statistics'. Chosen: **{chosen or 'n/a'}**."]
    if chosen and full:
        c = runs[chosen]
        share = c["upload_bytes_per_client"] / full["upload_bytes_per_client"]
        gap = full["test"]["i_auroc"] - c["test"]["i_auroc"]
        met = share <= 0.25 and gap <= 0.003
        lines.append(f"Target (at most a quarter of the MB, I-AUROC within 0.3 point): "
                     f"{share:.3f} of the MB, I-AUROC {-gap * 100:+.2f} points against the "
                     f"full statistics': {'met' if met else 'missed'}. fedad's PaDiM "
                     "defaults are now the chosen variant (padim/config.py).")
    lines += ["", f"Command: `{payload['command']}`"]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True)
    parser.add_argument("--dataset", default="mtd")
    parser.add_argument("--only", nargs="*", default=None, choices=list(VARIANTS))
    parser.add_argument("--work", type=Path, default=Path("/tmp/fedad-padim-lean"))
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    setup_logging()
    base = [f"dataset.name={args.dataset}", f"dataset.root={Path(args.root).resolve()}",
            "detector=padim", "num_clients=5", "partition.alpha=0.1", "partition.seed=0",
            "train.rounds=1", "backbone.cache=disk", "backbone.cache_dir=/tmp/fedad-featcache",
            *args.overrides]
    out_json = args.out / "padim_lean.json"
    payload = {"command": command_line(), "machine": machine(), "runs": {}}
    if out_json.is_file():
        payload["runs"] = json.loads(out_json.read_text()).get("runs", {})
    for name in VARIANTS:
        if args.only is not None and name not in args.only:
            continue
        payload["runs"][name] = run_one(args.work, name, base)
        payload["runs"] = {n: payload["runs"][n] for n in VARIANTS if n in payload["runs"]}
        write_results(args.out, "padim_lean", payload, markdown(payload))
    return 0


if __name__ == "__main__":
    sys.exit(main())
