"""fedad through Flower's deployment runtime: a real ``flower-superlink`` and three real
``flower-supernode`` processes on 127.0.0.1, each SuperNode reading its own data root
(PaDiM). SecAgg+ through Flower's runtime, with a site dropping out, is test_secure.py's:
with process isolation each of its four stages is a fresh ClientApp process per node,
~100 s of this suite's 10 minutes."""

from __future__ import annotations

import json
import ssl
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import httpx
import pytest

from fedad.cli.certs import make_certificates
from fedad.cli.deployment import LocalDeployment
from fedad.cli.overrides import compose
from fedad.cli.processes import alive, descendants
from fedad.cli.sites import make_sites
from fedad.data.factory import build_dataset
from fedad.data.holdout import holdout_split

TINY = ["dataset.texture_train_per_type=6", "dataset.texture_test_normal_per_type=2",
        "dataset.texture_test_anomalous_per_type=2", "partition.min_samples=1"]
# A frozen-feature detector: one round (a query, the train round and an evaluate message per
# node); with process isolation every message is a fresh process, so FedDyMem's extra round
# 0 cost ~40 s here.
RUN = ["dataset.name=mvtec", "dataset.image_size=64", "detector=padim", "padim.channels=16",
       "train.rounds=1", "eval_every=1", "examples=0", "output_dir=out"]


@pytest.fixture(scope="module")
def sites(tmp_path_factory) -> list[Path]:
    return make_sites(TINY, tmp_path_factory.mktemp("sites"), 3)


def _check_run(dep: LocalDeployment, run_id: str | None, status: str) -> dict:
    assert status == "finished:completed", f"run {run_id}: {status}; logs in {dep.work}/logs"
    result = json.loads((dep.work / "out" / f"run-{run_id}" / "rounds.json").read_text())
    assert [r["round"] for r in result["rounds"]] == [1]
    assert all(r["train"]["clients"] == 3 for r in result["rounds"])
    assert "secure" not in result["rounds"][0]["train"]  # plain uploads, one per node
    final = result["final"]
    assert set(final["per_client"]) == {"0", "1", "2"}  # metrics from every node
    for metrics in final["per_client"].values():
        assert 0.0 <= metrics["i_auroc"] <= 1.0 and 0.0 <= metrics["p_auroc"] <= 1.0
    assert not result["rejected"]
    return result


def _tree(dep: LocalDeployment) -> list[int]:
    pids = []
    for proc in dep.processes:
        assert proc.process is not None and proc.returncode is None, f"{proc.name} exited"
        pids += [proc.process.pid, *descendants(proc.process.pid)]
    return pids


@pytest.mark.slow
def test_tls_authenticated_supernodes_with_their_own_data(tmp_path: Path, sites: list[Path]):
    """The docker-compose set-up on one host: TLS, SuperNode authentication, process
    isolation (a flower-superexec beside the SuperLink and each SuperNode), three SuperNodes
    each reading its own site folder; intruders are refused, the run completes, each node
    cached its own features, and everything started is stopped (and nothing else)."""
    rogue = make_certificates(tmp_path / "rogue", ["localhost"], supernodes=1)
    bystander = subprocess.Popen(["sleep", "600"])  # not ours to stop
    try:
        with LocalDeployment(tmp_path / "dep", sites, secure=True, isolation="process") as dep:
            with pytest.raises(httpx.HTTPError):  # the SuperLink speaks TLS only
                httpx.get(f"http://{dep.address}/health", timeout=5.0)
            tls = ssl.create_default_context(cafile=str(dep.ca))
            assert httpx.get(f"https://{dep.address}/health", timeout=5.0,
                             verify=tls).is_success
            for key, name in ((rogue["supernode-0-key"], "unregistered"), (None, "keyless")):
                intruder = dep.start_supernode(0, key, name=name)
                try:
                    deadline = time.monotonic() + 60
                    while intruder.returncode is None and time.monotonic() < deadline:
                        time.sleep(0.5)
                    assert intruder.returncode not in (None, 0), f"the {name} SuperNode joined"
                    assert "Failed to initialize the connection to the SuperLink" in (
                        intruder.log_file.read_text())
                finally:
                    intruder.stop()
            run_id, status = dep.run(compose(RUN))
            started = _tree(dep)
        _check_run(dep, run_id, status)
        log = (dep.work / "logs" / "superlink.log").read_text()
        assert "activate-node HTTP/1.1\" 412" in log
        # node i read site i's folder, and its features went to its disk cache: one file
        # per image of that site (train + test) and per synthetic validation copy of its
        # held-out images, and the sites differ in size
        cfg = compose(RUN)
        images, held = [], []
        for s in sites:
            images.append(len([p for p in s.rglob("*.png") if "ground_truth" not in p.parts]))
            train = build_dataset(replace(cfg.dataset, root=str(s)), "train")
            held.append(len(holdout_split([r.name for r in train.records],
                                          cfg.calibration.holdout, cfg.calibration.seed)[1]))
        cached = [len(list((dep.work / "cache" / f"supernode-{i}").rglob("*.pt")))
                  for i in range(3)]
        assert cached == [n + h for n, h in zip(images, held, strict=True)]
        assert len(set(images)) > 1 and sum(held) > 0
        time.sleep(0.5)
        assert not [p for p in started if alive(p)], "processes left running"
        assert bystander.poll() is None, "stopped a process it did not start"
    finally:
        bystander.kill()
        bystander.wait()
