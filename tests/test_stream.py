"""Streamed training features (``backbone.stream``): the file round-trips, the chunked fits
equal the one-shot ones (PaDiM to float64 rounding, PatchCore exactly with one chunk and
covering as well within a bound with several), and a run streams end to end; a simulation
that cannot fit this machine's memory is refused before launch, naming what to change."""

from __future__ import annotations

import gc
from pathlib import Path

import numpy as np
import pytest
import torch

from fedad.components.coreset import covering_radius
from fedad.config.schema import RunConfig
from fedad.detectors.base import FeatureShape
from fedad.detectors.padim.detector import PaDiM
from fedad.detectors.patchcore.detector import PatchCore
from fedad.errors import ConfigError
from fedad.features.cache import extract_features
from fedad.features.stream import FeatureFile, FeatureWriter
from fedad.federation.compose import check
from fedad.federation.in_process import InProcess
from fedad.federation.memory import check_fits, estimate
from fedad.federation.run import federate
from partitions import partition_nodes


def stream_of(x: torch.Tensor, tmp_path: Path, batch: int = 3) -> FeatureFile:
    writer = FeatureWriter(tmp_path, x.dtype, "test features")
    for a in range(0, x.shape[0], batch):
        writer.append(x[a:a + batch])
    return writer.finish()


def test_a_feature_file_reads_back_what_was_written_and_is_deleted_with_it(tmp_path: Path):
    for dtype in (torch.float32, torch.float16):
        x = torch.randn(11, 4, 3, 2).to(dtype)
        f = stream_of(x, tmp_path)
        assert f.shape == x.shape and len(f) == 11 and f.ndim == 4
        assert f.nbytes == x.numel() * x.element_size() == f.path.stat().st_size
        assert torch.equal(f.load(), x)
        assert torch.equal(f.read(4, 9), x[4:9]) and f.read(10, 99).shape[0] == 1
        assert [c.shape[0] for c in f.chunks(4)] == [4, 4, 3]
        assert torch.equal(torch.cat(list(f.chunks(5))), x)
        folder = f.path.parent
        del f
        gc.collect()
        assert not folder.exists()
    with pytest.raises(ConfigError, match="stream_chunk"):
        next(stream_of(torch.zeros(2, 1, 1, 1), tmp_path).chunks(0))
    writer = FeatureWriter(tmp_path, torch.float32, "site 3 train features")
    with pytest.raises(ConfigError, match="site 3 train features: the dataset is empty"):
        writer.finish()


def test_a_killed_writers_folder_is_removed_by_the_next_writer(tmp_path: Path):
    dead = tmp_path / "fedad-stream-2147483646-abcd"  # no such process
    dead.mkdir()
    (dead / "features.bin").write_bytes(b"0" * 64)
    other = tmp_path / "unrelated"
    other.mkdir()
    writer = FeatureWriter(tmp_path, torch.float32, "features")
    assert not dead.exists() and other.exists() and writer.folder.exists()
    FeatureWriter(tmp_path, torch.float32, "features").abandon()  # this process lives: kept
    assert writer.folder.exists()
    writer.append(torch.zeros(2, 3, 1, 1))
    folder = writer.folder
    del writer  # an extraction that raised: its writer dropped unfinished
    gc.collect()
    assert not folder.exists()


def padim(chunk: int) -> PaDiM:
    cfg = RunConfig()
    cfg.padim.channels, cfg.padim.upload_dtype, cfg.backbone.stream_chunk = 6, "float64", chunk
    return PaDiM(cfg, FeatureShape(channels=10, height=3, width=4))


@pytest.mark.parametrize("chunk", [1, 4, 100])
def test_padim_statistics_from_chunks_equal_the_one_shot_statistics(tmp_path: Path, chunk):
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(13, 10, 3, 4, generator=g) * 2 + 5).contiguous()
    one, streamed = padim(chunk), padim(chunk)
    one.fit(x, None, 1)
    streamed.fit_stream(stream_of(x, tmp_path), None, 1)
    a, b = one.summarize(1), streamed.summarize(1)
    assert a["count"].tolist() == b["count"].tolist() == [13]
    np.testing.assert_allclose(b["mean"], a["mean"], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(b["scatter"], a["scatter"], rtol=1e-10, atol=1e-10)


def patchcore(chunk: int, ratio: float = 0.2) -> PatchCore:
    cfg = RunConfig()
    cfg.patchcore.upload_ratio, cfg.backbone.stream_chunk = ratio, chunk
    return PatchCore(cfg, FeatureShape(channels=8, height=5, width=5))


def patch_rows(x: torch.Tensor) -> torch.Tensor:
    return x.permute(0, 2, 3, 1).reshape(-1, x.shape[1])


def nearest(a: torch.Tensor, b: torch.Tensor):
    """Each row of ``a``'s nearest row of ``b``, by exact differences."""
    return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist").min(dim=1)


def test_patchcore_streamed_in_one_chunk_is_the_one_shot_coreset(tmp_path: Path):
    x = torch.randn(12, 8, 5, 5, generator=torch.Generator().manual_seed(1))
    one, streamed = patchcore(100), patchcore(100)
    one.fit(x, None, 1)
    streamed.fit_stream(stream_of(x, tmp_path), None, 1)
    assert torch.equal(streamed.bank, one.bank) and streamed.count == one.count == 300


def test_patchcore_streamed_in_chunks_uploads_as_many_rows_and_covers_nearly_as_well(
        tmp_path: Path):
    g = torch.Generator().manual_seed(2)
    centres = torch.randn(20, 8, generator=g) * 3
    pick = torch.randint(0, 20, (40, 5, 5), generator=g)
    x = (centres[pick] + 0.3 * torch.randn(40, 5, 5, 8, generator=g)).permute(0, 3, 1, 2)
    one, streamed = patchcore(100, 0.1), patchcore(7, 0.1)
    one.fit(x.contiguous(), None, 1)
    streamed.fit_stream(stream_of(x.contiguous(), tmp_path), None, 1)
    rows = patch_rows(x)
    assert streamed.count == one.count == 1000
    assert streamed.bank.shape == one.bank.shape == (100, 8)  # the chunks' shares add up
    # every uploaded row is one of the site's patches, none twice
    near = nearest(streamed.bank, rows)
    assert float(near.values.max()) == 0.0 and len(set(near.indices.tolist())) == 100
    where = near.indices
    r_one = covering_radius(rows, nearest(one.bank, rows).indices)
    r_streamed = covering_radius(rows, where)
    assert r_streamed <= 1.5 * r_one


def test_streaming_is_refused_where_nothing_reads_a_stream():
    for detector, exchange in (("feddymem", "summary"), ("feddymem", "fedavg")):
        cfg = RunConfig(detector=detector, exchange=exchange)
        cfg.backbone.stream = True
        with pytest.raises(ConfigError,
                           match="backbone.stream=true.*StreamedFit.*patchcore, padim"):
            check(cfg)
    cfg = RunConfig(detector="padim")
    cfg.backbone.stream, cfg.privacy.epsilon, cfg.privacy.clip = True, 1.0, 1.0
    with pytest.raises(ConfigError, match="privacy.epsilon"):
        check(cfg)
    cfg = RunConfig(detector="padim")
    cfg.backbone.stream, cfg.backbone.stream_chunk = True, 0
    with pytest.raises(ConfigError, match="backbone.stream_chunk"):
        check(cfg)
    cfg.backbone.stream_chunk = 2
    check(cfg)


def tiny(detector: str, stream: bool, tmp_path: Path) -> RunConfig:
    cfg = RunConfig(detector=detector, num_clients=2, examples=0)
    cfg.partition.min_samples = 1
    d = cfg.dataset
    d.texture_train_per_type, d.texture_test_normal_per_type = 5, 1
    d.texture_test_anomalous_per_type, d.image_size = 1, 64
    cfg.padim.channels, cfg.padim.upload_dtype = 16, "float64"
    cfg.backbone.stream, cfg.backbone.stream_chunk = stream, 3
    cfg.backbone.cache_dir = str(tmp_path / "cache")
    return check(cfg)


@pytest.mark.parametrize("detector", ["padim", "patchcore"])
def test_a_streamed_run_scores_as_the_one_shot_run(tmp_path: Path, detector: str):
    finals = []
    for stream in (False, True):
        cfg = tiny(detector, stream, tmp_path)
        if detector == "patchcore":  # one chunk per site: the same coreset
            cfg.backbone.stream_chunk = 1000
        transport = InProcess(cfg, partition_nodes(cfg))
        server = federate(cfg, transport, transport.keys, tmp_path / f"run-{stream}")
        finals.append(server.history[-1]["evaluate"])
    for key in ("i_auroc", "p_auroc"):
        assert finals[1][key]["mean"] == pytest.approx(finals[0][key]["mean"], abs=1e-6)


def test_extraction_streams_to_a_file_under_the_cache_folder(tmp_path: Path):
    from fedad.data.factory import build_dataset
    from fedad.federation.site_data import extractor_for

    cfg = tiny("padim", True, tmp_path)
    extractor, info = extractor_for(cfg)
    ds = build_dataset(cfg.dataset, "train")
    ds.set_normalisation(info["mean"], info["std"])
    one = extract_features(extractor, ds, "sig", torch.device("cpu"), batch_size=4,
                           cache="none")
    streamed = extract_features(extractor, ds, "sig", torch.device("cpu"), batch_size=4,
                                cache="none", cache_dir=tmp_path / "cache", stream=True)
    assert isinstance(streamed.features, FeatureFile) and streamed.masks is None
    assert streamed.features.path.is_relative_to(tmp_path / "cache")
    assert torch.equal(streamed.features.load(), one.features)
    assert streamed.paths == one.paths and torch.equal(streamed.labels, one.labels)
    assert streamed.nbytes == one.nbytes


# -- refused up front: a simulation that cannot fit this machine's memory ---------------------
def mtd_padim() -> RunConfig:
    cfg = RunConfig(detector="padim")
    cfg.dataset.image_size = 224
    return cfg


def test_the_memory_estimate_grows_with_images_unless_streamed():
    cfg = mtd_padim()
    small, big = estimate(cfg, 1_000, 200, 2), estimate(cfg, 20_000, 200, 2)
    assert big.per_image == small.per_image == 152 * 28 * 28 * 4  # Lite0 strides 8/16
    assert big.train == pytest.approx(20 * small.train) and big.test == small.test
    cfg.backbone.stream = True
    streamed = estimate(cfg, 20_000, 200, 2)
    assert streamed.train == 2.0 * streamed.per_image * 2 * cfg.backbone.stream_chunk
    assert streamed.train < 0.05 * big.train and streamed.held == big.held  # held: in memory
    assert streamed.total < 0.25 * big.total
    cfg.backbone.half = True
    assert estimate(cfg, 20_000, 200, 2).per_image == streamed.per_image // 2


def test_a_run_that_cannot_fit_is_refused_naming_what_to_change():
    cfg = mtd_padim()
    need = estimate(cfg, 20_000, 583, 2)
    with pytest.raises(ConfigError, match=r"needs about 21\.\d GB.*backbone\.stream=true.*"
                                          r"backbone\.half=true.*client_cpus"):
        check_fits(cfg, need, 16 * 10**9)
    check_fits(cfg, need, 64 * 10**9)  # fits: nothing raised
    check_fits(cfg, need, None)  # the OS does not say: not refused
    cfg.backbone.stream = True
    check_fits(cfg, estimate(cfg, 20_000, 583, 2), 16 * 10**9)


def test_fedad_sim_refuses_before_launch_when_the_machine_is_too_small(monkeypatch):
    import fedad.cli.sim as sim_cli
    from fedad.cli.overrides import compose

    sim = compose(["detector=padim", "num_clients=2", "partition.min_samples=1",
                   "dataset.texture_train_per_type=4"], base=sim_cli.SimConfig())
    sim_cli.preflight(sim, screen=False)  # this machine: fits
    monkeypatch.setattr(sim_cli, "physical_memory", lambda: 10**9)
    with pytest.raises(ConfigError, match="more than 90% of this machine's 1.0 GB"):
        sim_cli.preflight(sim, screen=False)
    sim.ray_address = "127.0.0.1:1"  # a cluster's memory is not this machine's
    with pytest.raises(ConfigError, match="no Ray cluster answers"):
        sim_cli.preflight(sim, screen=False)


def test_fedad_sim_removes_the_feature_files_its_killed_actors_left(monkeypatch, tmp_path):
    import fedad.cli.sim as sim_cli
    from fedad.cli.overrides import compose

    cache = tmp_path / "cache"
    left = cache / "fedad-stream-2147483646-actor"  # an actor Ray ended: no such process

    class Link:  # no SuperLink process: the run itself is not what is tested here
        env: dict = {}

        def __init__(self, *args) -> None: ...
        def __enter__(self): return self
        def __exit__(self, *exc) -> None: ...

    def run(*args, **kwargs):
        left.mkdir(parents=True)
        return None  # Flower did not start the run

    monkeypatch.setattr(sim_cli, "LocalSuperLink", Link)
    monkeypatch.setattr(sim_cli, "flwr_run", run)
    sim = compose(["detector=padim", "num_clients=2", "partition.min_samples=1",
                   "backbone.stream=true", f"backbone.cache_dir={cache}"],
                  base=sim_cli.SimConfig())
    assert sim_cli.launch(sim, tmp_path / "out", checked=True) == 1
    assert cache.is_dir() and not left.exists()
