"""fedad-export: a site's scorer as one ONNX graph that onnxruntime runs with the same maps,
scores and decisions as PyTorch, whose k-NN never holds a (queries x bank) block, and that
refuses what it cannot export by name."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from fedad.cli.export import main as export_main
from fedad.components.knn import NearestNeighbours, bank_chunk, chunked_nearest, torch_knn
from fedad.detectors.base import BANK, FeatureShape
from fedad.detectors.registry import create
from fedad.errors import ConfigError, FedadError
from fedad.evaluation.saved_site import load_summary
from fedad.export import ScorerModule, export_site, require_torch_score
from fedad.export.onnx_export import require_package
from fedad.export.runtime import load_images, run_onnx, session
from fedad.federation.predict import predict, site_scorer
from tests.test_detectors import tiny_cfg
from tests.test_predict import make_run

CPU = torch.device("cpu")


def tolerance(scale: float) -> float:
    """1e-4 relative to the score scale (the largest PyTorch image score), at least 1e-4
    absolute: the backbone's convolutions in onnxruntime and in PyTorch differ by float32
    rounding, which PaDiM's inverse covariances amplify to ~2e-6 of its scores (~100)."""
    return 1e-4 * max(1.0, scale)


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, tuple[Path, Path]]:
    """One tiny one-site run (64-px textures) per detector, and a folder of its held-out
    images (10, of which the 0.75-quantile threshold flags at least two)."""
    out = {}
    for name in ("patchcore", "padim"):
        tmp = tmp_path_factory.mktemp(name)
        run, _, _, paths = make_run(tmp, name)
        folder = tmp / "images"
        folder.mkdir()
        for i, p in enumerate(paths):
            shutil.copy(p, folder / f"{i:02d}.png")
        out[name] = (run, folder)
    return out


@pytest.mark.parametrize("detector", ["patchcore", "padim"])
def test_onnxruntime_scores_equal_pytorchs(runs, tmp_path: Path, capsys, detector: str):
    run, folder = runs[detector]
    model = tmp_path / "scorer.onnx"
    assert export_main([str(run), "--site", "0", "--out", str(model), "--chunk", "4",
                        "--check-images", str(folder), "-q"]) == 0
    printed = capsys.readouterr().out
    # the threshold is a quantile of these very images: one may sit on it, and float32
    # rounding then decides it; every other decision agrees
    found = re.search(r"check on 10 images.*, (\d+) decisions differ \((\d+) of them scored "
                      r"at the threshold", printed)
    assert found and found.group(1) == found.group(2), printed
    meta = json.loads(model.with_suffix(".json").read_text())
    cal = json.loads((run / "site-0" / "calibration.json").read_text())
    assert meta["detector"] == detector and meta["image_size"] == 64
    assert meta["threshold"] == cal["threshold"] and meta["input"]["normalised_inside"]
    assert meta["bank_chunk"] == 4 and meta["opset"] == 17
    if BANK in (summary := load_summary(run, 0)):  # PatchCore: its bank in blocks of 4
        m = summary[BANK].shape[0]
        assert m > 4 and not _by_bank(onnx.load(model), m) and _blocks(onnx.load(model), 4)

    # the reference: fedad-predict's own path (faiss k-NN for PatchCore)
    preds, maps, _, _ = predict(run, folder, 0, device="cpu")
    ref = np.array([p.score for p in preds])
    assert np.allclose(ref, cal["holdout_scores"], rtol=1e-4)  # the held-out images
    x = load_images(sorted(folder.glob("*.png")), 64)
    got_map, got_score, got_flag = run_onnx(session(model), x, batch_size=4)  # 4 + 4 + 2
    assert got_map.shape == (10, 64, 64) and got_score.shape == (10,)
    assert got_flag.dtype == np.bool_
    tol = tolerance(float(np.abs(ref).max()))
    assert np.abs(got_map - maps.numpy()).max() <= tol
    assert np.abs(got_score - ref).max() <= tol
    want = np.array([p.anomalous for p in preds])
    assert want.any() and not want.all()  # the decision is not trivially constant
    tie = np.abs(ref - meta["threshold"]) <= tol  # an image scored at the threshold
    assert np.array_equal(got_flag[~tie], want[~tie])


def test_check_images_takes_skip_bad_as_its_error_suggests(runs, tmp_path: Path, capsys):
    run, folder = runs["padim"]
    mixed = tmp_path / "mixed"
    shutil.copytree(folder, mixed)
    (mixed / "broken.png").write_bytes(b"not a png")
    model = tmp_path / "scorer.onnx"
    args = [str(run), "--out", str(model), "--check-images", str(mixed), "-q"]
    assert export_main(args) == 2
    err = capsys.readouterr().err
    assert "broken.png" in err and "--skip-bad" in err
    assert export_main([*args, "--skip-bad"]) == 0
    printed = capsys.readouterr().out
    assert "check on 10 images" in printed and "1 unreadable image(s) skipped" in printed
    assert "broken.png" in printed


def test_chunked_knn_equals_the_full_search():
    g = torch.Generator().manual_seed(0)
    q, bank = torch.randn(50, 8, generator=g), torch.randn(300, 8, generator=g)
    full = torch.cdist(q.double(), bank.double())
    for k in (1, 3):
        idx = chunked_nearest(q, bank, k, chunk=32)  # 10 blocks, the last one of 12 rows
        want = full.topk(k, dim=1, largest=False)
        assert torch.equal(idx.sort(dim=1).values, want.indices.sort(dim=1).values)
        dist, near = torch_knn(q, bank, k, bank_rows=32)
        assert torch.allclose(dist.double(), want.values, atol=1e-5)
        fast, fast_idx = NearestNeighbours(bank).search(q, k)
        assert torch.allclose(dist, fast, atol=1e-5) and torch.equal(near, fast_idx)
    with bank_chunk(7):  # what the exporter sets: equal answers
        assert torch.equal(torch_knn(q, bank, 1)[1], torch_knn(q, bank, 1, bank_rows=300)[1])
    with pytest.raises(ConfigError, match="bank chunk"):
        chunked_nearest(q, bank, 1, chunk=0)


def _by_bank(model: onnx.ModelProto, rows: int) -> list[str]:
    """Node outputs whose inferred shape holds ``rows`` and a batch-dependent (symbolic or
    unknown) dimension: a (queries x bank) block. The bank itself, a constant, is not one."""
    inferred = onnx.shape_inference.infer_shapes(model)
    out = []
    for v in [*inferred.graph.value_info, *inferred.graph.output]:
        dims = [d.dim_value if d.HasField("dim_value") else None
                for d in v.type.tensor_type.shape.dim]
        if rows in dims and None in dims:
            out.append(v.name)
    return out


def _blocks(model: onnx.ModelProto, rows: int) -> int:
    """How many node outputs are ``(batch-dependent, rows)``."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return sum([d.dim_value if d.HasField("dim_value") else None
                for d in v.type.tensor_type.shape.dim][-1:] == [rows]
               and not v.type.tensor_type.shape.dim[0].HasField("dim_value")
               for v in inferred.graph.value_info)


class Nearest(torch.nn.Module):
    """The k-NN of the scorers' torch path alone: queries -> their 3 nearest distances."""

    def __init__(self, bank: torch.Tensor) -> None:
        super().__init__()
        self.bank = bank

    def forward(self, queries: torch.Tensor) -> torch.Tensor:
        return torch_knn(queries, self.bank, 3)[0]


def _export_knn(bank: torch.Tensor, chunk: int, path: Path) -> onnx.ModelProto:
    with bank_chunk(chunk), torch.no_grad():
        torch.onnx.export(Nearest(bank), (torch.zeros(5, bank.shape[1]),), str(path),
                          input_names=["q"], output_names=["d"], opset_version=17,
                          dynamic_axes={"q": {0: "n"}, "d": {0: "n"}}, dynamo=False)
    return onnx.load(path)


@pytest.mark.filterwarnings("ignore")
def test_the_exported_knn_never_holds_a_queries_by_bank_block(tmp_path: Path):
    """A bank of 1000 rows exported in chunks of 128: no node output is (queries, 1000) in
    its inferred shape (only the bank itself, a constant, has 1000 rows); in one chunk, the
    (queries, 1000) block appears, so the check sees it. onnxruntime's distances, for more
    queries than the graph was traced with, equal faiss's."""
    g = torch.Generator().manual_seed(1)
    bank = torch.randn(1000, 8, generator=g)
    chunked = _export_knn(bank, 128, tmp_path / "chunked.onnx")
    whole = _export_knn(bank, 1000, tmp_path / "whole.onnx")
    assert not _by_bank(chunked, 1000)
    assert _by_bank(whole, 1000)  # the check can fail
    assert _blocks(chunked, 128) >= 7  # the 7 full blocks (and one of 104 rows)
    q = torch.randn(40, 8, generator=g)
    (got,) = session(tmp_path / "chunked.onnx").run(None, {"q": q.numpy()})
    want, _ = NearestNeighbours(bank).search(q, 3)
    assert got.shape == (40, 3) and np.abs(got - want.numpy()).max() <= 1e-5


def test_what_cannot_be_exported_is_named(runs, tmp_path: Path, capsys):
    import tests.toy_trainable  # noqa: F401  (registers the toy autoencoder)

    cfg = tiny_cfg("toyae")
    cfg.exchange = "fedavg"
    with pytest.raises(ConfigError, match="an ONNX export .* requires TorchScore"):
        require_torch_score(create(cfg, FeatureShape(12, 4, 4)))
    run, _ = runs["patchcore"]
    with pytest.raises(ConfigError, match="site-3: no such site"):
        export_site(run, 3, tmp_path / "x.onnx")
    assert export_main([str(tmp_path / "nowhere"), "--out", str(tmp_path / "y.onnx")]) == 2
    assert "no such run folder" in capsys.readouterr().err
    assert not (tmp_path / "y.onnx").exists()
    with pytest.raises(FedadError, match=r'pip install -e "\.\[export\]"'):
        require_package("surely_not_an_installed_package", "fedad-export")


def test_without_a_threshold_every_decision_is_false(runs):
    run, folder = runs["patchcore"]
    s = site_scorer(run, 0, CPU)
    module = ScorerModule(s.extractor, s.detector, s.summary, 64, s.info["mean"],
                          s.info["std"], None)
    x = load_images(sorted(folder.glob("*.png"))[:2], 64)
    with torch.no_grad():
        _, score, decision = module(x)
    assert float(module.threshold) == float("inf") and score.min() > 0
    assert decision.dtype == torch.bool and not decision.any()
    with pytest.raises(ConfigError, match=r"expected \(N, 3, 64, 64\)"):
        module(torch.zeros(1, 3, 32, 32))
