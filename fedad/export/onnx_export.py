"""Write a site's scorer (:class:`~fedad.export.module.ScorerModule`) as an ONNX model plus
its JSON sidecar (:mod:`fedad.export.sidecar`).

Exporter: the legacy TorchScript exporter (``torch.onnx.export(..., dynamo=False)``) by
default. On torch 2.14 both exporters produce graphs whose outputs match PyTorch within
float32 rounding, but the tracing exporter takes under a second for a tiny 64-px PatchCore
scorer where the ``torch.export``/onnxscript one (``dynamo=True``) takes about 11 s on two
cores (a test suite and a site's line both feel that), and it targets opset 17, which older
onnxruntime builds on inspection lines run. ``dynamo=True`` is kept as a choice (opset 18
or later, needs ``onnxscript``). Either way the batch axis is dynamic and the scorer's
Python loops are unrolled at export time: the k-NN's loop over bank chunks
(:func:`~fedad.components.knn.chunked_nearest`) becomes ``ceil(M / chunk)`` blocks whose
largest intermediate is ``(queries, chunk)``, never ``(queries, M)``; the loop over query
chunks is not taken while exporting (its count would follow the traced batch).
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from fedad.components.knn import BANK_CHUNK, bank_chunk
from fedad.errors import ConfigError, FedadError
from fedad.export.module import ScorerModule, require_torch_score
from fedad.export.sidecar import sidecar_path, write_sidecar
from fedad.federation.predict import SiteScorer, site_scorer

log = logging.getLogger("fedad")

OPSET = 17  # the legacy exporter's; the dynamo exporter needs at least 18
DYNAMO_OPSET = 18
INPUT = "images"
OUTPUTS = ("map", "score", "decision")
INSTALL_HINT = 'pip install -e ".[export]" (or: pip install onnx onnxruntime onnxscript)'


def require_package(name: str, what: str) -> None:
    """Raises :class:`FedadError` naming ``name`` and how to install it when it is not
    importable (``what``: what needs it)."""
    if importlib.util.find_spec(name) is None:
        raise FedadError(f"{what} needs the {name} package, which is not installed: "
                         f"{INSTALL_HINT}")


@dataclass
class ExportResult:
    """What :func:`export_site` wrote: the model, its sidecar and the sidecar's content."""

    model: Path
    sidecar: Path
    meta: dict


def scorer_module(scorer: SiteScorer) -> ScorerModule:
    """The site's scorer as one module (normalisation inside; see :class:`ScorerModule`).

    Raises:
        ConfigError: the run's detector has no torch-only score, naming it.
    """
    require_torch_score(scorer.detector)
    return ScorerModule(scorer.extractor, scorer.detector, scorer.summary,
                        scorer.cfg.dataset.scored_size(), scorer.info["mean"], scorer.info["std"],
                        scorer.threshold)


def export_module(module: ScorerModule, out: str | Path, chunk: int = BANK_CHUNK,
                  dynamo: bool = False, opset: int | None = None, name: str = "scorer"
                  ) -> int:
    """Write ``module`` as ONNX to ``out`` (batch axis dynamic; bank chunks of ``chunk``
    rows); return the opset used.

    Raises:
        ConfigError: ``chunk < 1``.
        FedadError: a missing package, or the exporter failed (naming ``name``, the
            detector).
    """
    if chunk < 1:
        raise ConfigError(f"--chunk must be >= 1, got {chunk}")
    require_package("onnx", "fedad-export")
    if dynamo:
        require_package("onnxscript", "the dynamo exporter (dynamo=True)")
    opset = opset or (DYNAMO_OPSET if dynamo else OPSET)
    if dynamo and opset < DYNAMO_OPSET:
        raise ConfigError(f"the dynamo exporter needs opset >= {DYNAMO_OPSET}, got {opset}")
    s = module.image_size
    example = torch.rand(1, 3, s, s, generator=torch.Generator().manual_seed(0))
    kwargs: dict = {"input_names": [INPUT], "output_names": list(OUTPUTS),
                    "opset_version": opset, "dynamo": dynamo}
    if dynamo:
        kwargs["dynamic_shapes"] = {"images": {0: torch.export.Dim("batch")}}
        kwargs["external_data"] = False
    else:
        kwargs["dynamic_axes"] = {k: {0: "batch"} for k in (INPUT, *OUTPUTS)}
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    try:
        with bank_chunk(chunk), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # tracer and deprecation chatter, not errors
            # one eager call first: what a detector caches from the summary (PaDiM's
            # inverse covariances) is then one constant in the graph, not the ops (and
            # the zero-filled buffer) that built it
            module(example)
            torch.onnx.export(module, (example,), str(out), **kwargs)
    except FedadError:
        raise
    except Exception as exc:  # the exporter's own errors: say whose graph failed
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise FedadError(f"detector {name}: ONNX export failed ({type(exc).__name__}: "
                         f"{first[:300]})") from exc
    import onnx

    onnx.checker.check_model(str(out))
    log.info("exported %s (%.1f MB, opset %d) in %.1fs", out, out.stat().st_size / 1e6, opset,
             time.perf_counter() - start)
    return opset


def export_site(run_dir: str | Path, site: int, out: str | Path, chunk: int = BANK_CHUNK,
                dynamo: bool = False, scorer: SiteScorer | None = None) -> ExportResult:
    """Site ``site``'s scorer of the run in ``run_dir`` as ``out`` (ONNX) and
    ``out`` with suffix ``.json`` (the sidecar: input size, normalisation, threshold,
    detector, opset, fedad version).

    Raises:
        ConfigError: no run in ``run_dir``, no such site, or a detector that cannot be
            exported (named).
        FedadError: a missing package or a failed export (named).
    """
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such run folder")
    require_package("onnx", "fedad-export")
    log.info("loading site %d of %s", site, run_dir)
    s = scorer or site_scorer(run_dir, site, torch.device("cpu"))
    module = scorer_module(s)
    if s.threshold is None:
        log.warning("site %d has no threshold (calibration.holdout=0): the model's "
                    "decision output is always false", site)
    opset = export_module(module, out, chunk, dynamo, name=s.cfg.detector)
    meta = write_sidecar(sidecar_path(out), s, site, Path(out), opset=opset, chunk=chunk,
                         exporter="dynamo" if dynamo else "torchscript",
                         input_name=INPUT, outputs=OUTPUTS)
    return ExportResult(Path(out), sidecar_path(out), meta)
