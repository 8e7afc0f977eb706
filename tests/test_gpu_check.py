"""benchmarks/gpu_check.py on the CPU (``--device cpu --tiny``), so the GPU check cannot rot
on machines without a GPU; its stage is measured against what one command may carry."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from benchmarks.gpu_check import check_size, main, mtd_subset
from fedad.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]


def test_the_check_runs_on_the_cpu_and_writes_a_few_flat_files(tmp_path: Path):
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py"), "run",
                          "--device", "cpu", "--tiny", "--out", str(out), "--minutes", "0.01",
                          "--probe-steps", "1", "--tests-k", "knn or mahalanobis"],
                         capture_output=True, text=True, timeout=900, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    files = sorted(p.name for p in out.iterdir())
    assert files == ["gpu_check.json", "gpu_check.md", "gpu_check_curves.png",
                     "gpu_check_tests.txt"]  # at most 8, no folder (what comes back)
    p = json.loads((out / "gpu_check.json").read_text())
    # the suite runs two of the gpu tests there (the others repeat CPU tests of the suite)
    assert p["tests"]["returncode"] == 0 and "2 passed" in p["tests"]["summary"], \
        (out / "gpu_check_tests.txt").read_text()[-3000:]
    assert set(p["frozen"]) == {"padim-centralized", "padim-federated",
                                "patchcore-centralized", "patchcore-federated"}
    for row in p["frozen"].values():
        assert row["same_to_3_decimals"]
        assert 0.5 < row["device"]["metrics"]["i_auroc"] <= 1.0
        assert row["device"]["train_images"] > 0 and row["device"]["features_s"] > 0
    for det in ("asymst", "diffad"):
        r = p["trained"][det]
        # every phase of the paper's budget was probed and run, scaled by one fraction
        assert set(r["probe"]["seconds_per_step"]) == set(r["paper_steps"]) == set(r["steps"])
        assert 0 < r["fraction"] <= 1
        assert all(s >= 1 for s in r["steps"].values())
        assert all(math.isfinite(x["loss"]) for x in r["run"]["losses"])
        assert len(r["run"]["losses"]) >= len(r["steps"])
        assert all(math.isfinite(v) for v in r["run"]["metrics"].values())
    stages = {t["stage"] for t in p["throughput"]}
    assert {"PaDiM features (images/s)", "PaDiM scoring (images/s)",
            "asymst ddpm (steps/s)", "diffad network (steps/s)"} <= stages
    assert "| padim-federated |" in (out / "gpu_check.md").read_text()


def fake_mtd(root: Path, normals: int = 20, defects: int = 6) -> None:
    rng = np.random.default_rng(0)

    def image(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (40, 40), dtype=np.uint8)).save(path)

    names = [f"exp{1 + i % 3}_num_{i}.jpg" for i in range(normals)]
    for n in names:
        image(root / "MT_Free" / "Imgs" / n)
    (root / "differnet_train_filenames.txt").write_text("\n".join(names[:15]) + "\n")
    for i in range(defects):
        image(root / "MT_Crack" / "Imgs" / f"exp1_num_{100 + i}.jpg")
        image(root / "MT_Crack" / "Imgs" / f"exp1_num_{100 + i}.png")


def test_the_subset_keeps_every_fifth_image_of_each_set_with_its_masks(tmp_path: Path):
    fake_mtd(tmp_path / "mtd")
    counts = mtd_subset(tmp_path / "mtd", tmp_path / "sub", every=5)
    assert counts == {"train": 3, "test_normal": 1, "defective": {"MT_Crack": 2}}
    listed = (tmp_path / "sub" / "differnet_train_filenames.txt").read_text().split()
    assert len(listed) == 3
    assert all((tmp_path / "sub" / "MT_Free" / "Imgs" / n).is_file() for n in listed)
    crack = sorted(p.name for p in (tmp_path / "sub" / "MT_Crack" / "Imgs").iterdir())
    assert crack == ["exp1_num_100.jpg", "exp1_num_100.png", "exp1_num_105.jpg",
                     "exp1_num_105.png"]
    with pytest.raises(ConfigError, match="differnet_train_filenames.txt not found"):
        mtd_subset(tmp_path / "sub" / "MT_Crack", tmp_path / "sub2")


def test_a_stage_over_the_carry_limit_is_refused_naming_its_parts(tmp_path: Path, capsys):
    check_size({"repo": 7 * 2**20, "wheels": 40 * 2**20, "data": 10 * 2**20})
    with pytest.raises(ConfigError, match=r"60\.0 MiB, over the 58 MiB.*wheels 45\.0 MiB"):
        check_size({"repo": 5 * 2**20, "wheels": 45 * 2**20, "data": 10 * 2**20}, 58)
    fake_mtd(tmp_path / "mtd")
    code = main(["prepare", "--root", str(tmp_path / "mtd"), "--stage", str(tmp_path / "st"),
                 "--no-wheels", "--limit-mib", "0.01"])
    assert code == 2 and "over the 0.01 MiB one command may carry" in capsys.readouterr().err
    manifest = json.loads((tmp_path / "st" / "manifest.json").read_text())
    assert manifest["subset"]["train"] == 3 and manifest["bytes"]["data"] > 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_a_gpu_run_without_a_gpu_is_refused_with_the_cpu_command(tmp_path: Path, capsys):
    assert main(["run", "--device", "cuda", "--out", str(tmp_path)]) == 2
    assert "--device cpu --tiny" in capsys.readouterr().err
