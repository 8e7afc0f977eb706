"""anomalib's models federated by fedad (docs/anomalib.md) on a real dataset, beside fedad's
own PaDiM and PatchCore on the same sites and backbone.

    python benchmarks/anomalib_models.py --root ../shared/data/mtd [--rows ROW ...]
        [--work DIR] [--out DIR] [--name NAME] [--steps N] [-- key=value ...]

Rows (``--rows``; all by default), each a full in-process run of the engine
(:mod:`benchmarks._resumable`: resumed from its checkpoint when interrupted, read back when
finished), MTD at Lite0 224 px, 5 sites (Dirichlet alpha 0.1) or one site with every
training image:

* ``fedad-padim-centralized`` / ``-federated``, ``anomalib-padim-...``: PaDiM, fedad's and
  anomalib's, by the summary exchange, on the same levels (strides 8/16: anomalib's
  members read what fedad's ``padim.strides`` / ``patchcore.strides`` say) and 100
  channels;
* ``fedad-patchcore-...``, ``anomalib-patchcore-...``: PatchCore, both at a 10% coreset per
  site (fedad's global bank then reduced to 1%, anomalib's the union);
* ``<model>-centralized``, ``<model>-fedavg``, ``<model>-fedprox`` for the trained models
  ``stfpm``, ``fre`` and ``draem``: anomalib's training step and optimiser at
  ``budget=cpu`` (400 steps per site, 25 a round; the centralized row takes the same steps
  with batches 5x as large, :func:`benchmarks._resumable.centralized_of`).

Every value is a default fixed a priori (nothing is chosen on the test set). Reported:
I-AUROC, P-AUROC, PRO (mean over sites), MB uploaded per site and round, seconds of
training (summed over sites) and of the run. Without pixel masks only I-AUROC is reported.
"""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks._common import write_results  # noqa: E402
from benchmarks._resumable import (  # noqa: E402
    base_flat,
    centralized_of,
    results_payload,
    row_parser,
    run_row,
)
from fedad.config.flat import from_flat  # noqa: E402
from fedad.config.schema import RunConfig  # noqa: E402
from fedad.detectors.capabilities import Budgeted  # noqa: E402
from fedad.detectors.registry import check, detector_class, label, resolve  # noqa: E402
from fedad.errors import ConfigError  # noqa: E402
from fedad.federation.centralized import centralized_config  # noqa: E402
from fedad.progress import setup_logging  # noqa: E402

log = logging.getLogger("fedad")
SITES = 5


def _anomalib(model: str) -> dict:
    return {"detector": "anomalib", "sections": {"anomalib": {"model": model}}}


ROWS: dict[str, dict] = {}
for _who, _flat in (("fedad", {}), ("anomalib", None)):
    for _det in ("padim", "patchcore"):
        base = {"detector": _det} if _flat is not None else _anomalib(_det)
        for _mode in ("centralized", "federated"):
            ROWS[f"{_who}-{_det}-{_mode}"] = {**base, "exchange": "summary"}
for _model in ("stfpm", "fre", "draem"):
    for _mode, _exchange in (("centralized", "fedavg"), ("fedavg", "fedavg"),
                             ("fedprox", "fedprox")):
        ROWS[f"{_model}-{_mode}"] = {**_anomalib(_model), "exchange": _exchange}


def row_config(base: dict, row: str, steps: int = 0) -> RunConfig:
    flat = {**base, **ROWS[row]}
    if steps and "sections" in flat:  # a trained model's steps per site (0: its budget's)
        section = flat["sections"]["anomalib"]
        flat["sections"] = {"anomalib": {**section, "steps": steps}}
    cfg = resolve(from_flat(flat))
    if row.endswith("centralized"):  # a trained model takes the same steps, 5x batches
        trained = issubclass(detector_class(cfg.detector), Budgeted)
        cfg = centralized_of(cfg, SITES) if trained else centralized_config(cfg)
    else:
        cfg.eval_every = 10**9  # the final round only
    cfg.examples = 0
    return check(resolve(cfg))


def summarise(cfg: RunConfig, result: dict) -> dict:
    rounds = result["rounds"]
    final = result["final"]["per_client"]
    keys = [k for k in ("i_auroc", "p_auroc", "pro") if all(k in v for v in final.values())]
    train = sum(sum(r["train"]["seconds-client-sum"].values()) for r in rounds)
    return {"label": label(cfg), "sites": len(final),
            **{k: float(np.mean([v[k] for v in final.values()])) for k in keys},
            "mb_up_per_round": float(np.mean([r["bytes"]["received_per_client"]
                                              for r in rounds])) / 1e6,
            "rounds": len(rounds), "seconds_train": train,
            "loss_first_last": [rounds[0]["train"]["loss"].get("mean"),
                                rounds[-1]["train"]["loss"].get("mean")]}


def markdown(p: dict) -> str:
    lines = [f"# anomalib's models federated, beside fedad's ({p['dataset']})", "",
             "| row | run | I-AUROC | P-AUROC | PRO | MB up/round | rounds | train s | wall s |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row, r in p["rows"].items():
        f = [f"{r[k]:.3f}" if k in r else "-" for k in ("i_auroc", "p_auroc", "pro")]
        lines.append(f"| {row} | {r['label']} ({r['sites']} site(s)) | {' | '.join(f)} | "
                     f"{r['mb_up_per_round']:.2f} | {r['rounds']} | {r['seconds_train']:.0f} | "
                     f"{r['wall']:.0f} |")
    if p.get("notes"):  # what the numbers cannot say themselves (kept across runs)
        lines += ["", "Notes:", *[f"- {n}" for n in p["notes"]]]
    lines += ["", "Commands:", *(f"- `{c}`" for c in p.get("commands", []))]
    return "\n".join(lines)


def main() -> None:
    p = row_parser(__doc__, list(ROWS), "/tmp/fedad-anomalib", "anomalib_models")
    p.add_argument("--steps", type=int, default=0,
                   help="a trained model's optimiser steps per site (0: budget=cpu's)")
    p.add_argument("overrides", nargs="*", help="RunConfig overrides (after --)")
    args = p.parse_args()
    setup_logging()
    flat = base_flat(p, args, {"dataset.image_size": 224})
    try:
        for row in args.rows:
            row_config(flat, row, args.steps)  # a bad override or a missing extra stops here
    except ConfigError as exc:
        p.error(str(exc))
    payload = results_payload(args)
    for row in args.rows:
        cfg = row_config(flat, row, args.steps)
        t = time.perf_counter()
        entry = summarise(cfg, run_row(cfg, args.work / row))
        payload["rows"][row] = {**entry, "wall": time.perf_counter() - t}
        log.info("%s: %s", row, {k: v for k, v in entry.items()
                                 if k in ("i_auroc", "p_auroc", "pro")})
        write_results(args.out, args.name, payload, markdown(payload))


if __name__ == "__main__":
    main()
