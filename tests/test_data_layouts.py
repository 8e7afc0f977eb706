"""Dataset layouts (MVTec/BTAD, VisA, MTD, mixed), file reading and their errors."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedad.config.schema import DataConfig
from fedad.data import ANOMALOUS, NORMAL, AnomalyDataset, SampleRecord, build_dataset
from fedad.data.factory import has_masks, part_names
from fedad.data.io import FileSource, list_images, read_image, read_mask, require_dir
from fedad.data.mixed import mixed_records
from fedad.data.mtd import mtd_records
from fedad.data.mvtec import mvtec_categories, mvtec_records
from fedad.data.visa import visa_categories, visa_records
from fedad.errors import ConfigError, DataError

SIZE = 32
BOX = (4, 10, 5, 12)  # rows 4..9, columns 5..11 are defective
REAL_MTD = Path(__file__).resolve().parents[1].parent / "shared/data/mtd"


def _image(path: Path, mode: str = "RGB", size: tuple[int, int] = (SIZE, SIZE)) -> Path:
    """Write a small image with a gradient (so it is not constant) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    w, h = size
    gray = (np.add.outer(np.arange(h), np.arange(w)) * 3 % 256).astype(np.uint8)
    if mode == "L":
        img = Image.fromarray(gray, mode="L")
    else:
        img = Image.fromarray(np.stack([gray, 255 - gray, gray // 2], axis=2), mode="RGB")
    img.save(path)
    return path


def _mask(path: Path, size: tuple[int, int] = (SIZE, SIZE), box=BOX) -> Path:
    """Write an L mask that is 255 inside ``box`` (r0, r1, c0, c1) and 0 elsewhere."""
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    r0, r1, c0, c1 = box
    m[r0:r1, c0:c1] = 255
    Image.fromarray(m, mode="L").save(path)
    return path


def _mvtec_tree(root: Path, category: str = "bottle", masks: bool = True) -> Path:
    cat = root / category
    for i in range(3):
        _image(cat / "train" / "good" / f"{i:03d}.png")
    for i in range(2):
        _image(cat / "test" / "good" / f"{i:03d}.png")
    for defect in ("broken", "crack"):
        for i in range(2):
            _image(cat / "test" / defect / f"{i:03d}.png")
            if masks:
                _mask(cat / "ground_truth" / defect / f"{i:03d}_mask.png")
    return root


def _box_mask() -> torch.Tensor:
    expected = torch.zeros(1, SIZE, SIZE)
    r0, r1, c0, c1 = BOX
    expected[0, r0:r1, c0:c1] = 1
    return expected


# ----------------------------------------------------------------------------- io helpers


def test_list_images_filters_and_sorts(tmp_path: Path) -> None:
    for name in ("b.PNG", "a.jpg", "d.TIFF", "c.bmp", "e.jpeg", "f.tif"):
        _image(tmp_path / name)
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "._a.png").write_bytes(b"\x00\x05")  # macOS resource fork
    (tmp_path / "sub.png").mkdir()
    names = [p.name for p in list_images(tmp_path)]
    assert names == ["a.jpg", "b.PNG", "c.bmp", "d.TIFF", "e.jpeg", "f.tif"]


def test_require_dir_names_what_and_path(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(DataError, match=re.escape(f"dataset root not found: {missing}")):
        require_dir(missing, "dataset root")
    assert require_dir(tmp_path, "x") == tmp_path


def test_grayscale_rgba_and_16bit_become_rgb_uint8(tmp_path: Path) -> None:
    gray = _image(tmp_path / "g.png", mode="L")
    arr = read_image(gray)
    assert arr.shape == (SIZE, SIZE, 3) and arr.dtype == np.uint8
    assert np.array_equal(arr[..., 0], arr[..., 1]) and np.array_equal(arr[..., 0], arr[..., 2])
    assert np.array_equal(arr[..., 0], np.asarray(Image.open(gray)))

    rgba = tmp_path / "a.png"
    Image.new("RGBA", (8, 6), (10, 20, 30, 0)).save(rgba)
    assert read_image(rgba).shape == (6, 8, 3)
    assert read_image(rgba)[0, 0].tolist() == [10, 20, 30]

    deep = tmp_path / "d.png"
    Image.fromarray(np.full((4, 5), 65535, dtype=np.uint16)).save(deep)
    out = read_image(deep)
    assert out.shape == (4, 5, 3) and out.dtype == np.uint8 and int(out.min()) == 255


def test_mask_any_mode_is_binarised(tmp_path: Path) -> None:
    m = np.zeros((4, 4, 3), dtype=np.uint8)
    m[0, 0] = 255
    m[1, 1] = 100  # below threshold after grayscale conversion
    Image.fromarray(m, mode="RGB").save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.dtype == bool and out.shape == (4, 4)
    assert out.sum() == 1 and out[0, 0]


def test_file_source_mask_none_without_mask_path(tmp_path: Path) -> None:
    rec = SampleRecord(path=str(_image(tmp_path / "x.png")), label=NORMAL, product_type="p")
    assert FileSource().load_mask(rec, (SIZE, SIZE)) is None


# ------------------------------------------------------------------------------- MVTec


def test_mvtec_with_ground_truth(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path)
    train = mvtec_records(root, "bottle", "train")
    test = mvtec_records(root, "bottle", "test")
    assert len(train) == 3 and all(r.label == NORMAL and r.mask_path is None for r in train)
    assert Counter(r.defect_type for r in test) == {"good": 2, "broken": 2, "crack": 2}
    assert {r.product_type for r in test} == {"bottle"}
    for r in test:
        assert r.label == (NORMAL if r.defect_type == "good" else ANOMALOUS)
        if r.label == ANOMALOUS:
            assert r.mask_path == str(
                root / "bottle" / "ground_truth" / r.defect_type / (Path(r.path).stem + "_mask.png")
            )
        else:
            assert r.mask_path is None

    ds = build_dataset(DataConfig(name="mvtec", root=str(root), image_size=SIZE), "test")
    assert ds.has_masks and len(ds) == 6
    anomalous = ds[ds.labels.index(ANOMALOUS)]
    assert anomalous.image.shape == (3, SIZE, SIZE) and anomalous.mask.shape == (1, SIZE, SIZE)
    assert torch.equal(anomalous.mask, _box_mask())
    normal = ds[ds.labels.index(NORMAL)]
    assert normal.label == NORMAL and normal.mask is not None and normal.mask.sum() == 0


def test_mvtec_resized_mask_keeps_defect_location(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path)
    ds = build_dataset(DataConfig(name="mvtec", root=str(root), image_size=16), "test")
    sample = ds[ds.labels.index(ANOMALOUS)]
    assert sample.image.shape == (3, 16, 16) and sample.mask.shape == (1, 16, 16)
    ys, xs = torch.nonzero(sample.mask[0], as_tuple=True)
    assert 2 <= ys.min() and ys.max() <= 5 and 2 <= xs.min() and xs.max() <= 6
    assert sample.mask.sum() > 0


def test_mvtec_without_ground_truth_is_image_level(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path, masks=False)
    test = mvtec_records(root, "bottle", "test")
    assert len(test) == 6 and all(r.mask_path is None for r in test)
    assert sum(r.label for r in test) == 4
    ds = build_dataset(DataConfig(name="mvtec", root=str(root), image_size=SIZE), "test")
    sample = ds[ds.labels.index(ANOMALOUS)]
    assert not ds.has_masks and sample.mask is None and sample.label == ANOMALOUS


def test_btad_like_tree(tmp_path: Path) -> None:
    cat = tmp_path / "01"
    for i in range(2):
        _image(cat / "train" / "ok" / f"{i:04d}.bmp")
        _image(cat / "test" / "ok" / f"{i:04d}.bmp")
        _image(cat / "test" / "ko" / f"{i:04d}.bmp")
        _mask(cat / "ground_truth" / "ko" / f"{i:04d}.png")
    train = mvtec_records(tmp_path, "01", "train")
    test = mvtec_records(tmp_path, "01", "test")
    assert [r.label for r in train] == [NORMAL, NORMAL]
    assert {r.defect_type for r in train} == {"good"}
    assert Counter((r.defect_type, r.label) for r in test) == {("ko", 1): 2, ("good", 0): 2}
    ko = [r for r in test if r.label == ANOMALOUS]
    assert [Path(r.mask_path).name for r in ko] == ["0000.png", "0001.png"]
    assert all(Path(r.path).stem == Path(r.mask_path).stem for r in ko)
    ds = AnomalyDataset(test, FileSource(), image_size=SIZE, has_masks=has_masks(test))
    assert torch.equal(ds[test.index(ko[0])].mask, _box_mask())


def test_mvtec_categories_and_all_categories(tmp_path: Path) -> None:
    _mvtec_tree(tmp_path, "bottle")
    _mvtec_tree(tmp_path, "cable", masks=False)
    (tmp_path / "license_dir").mkdir()
    (tmp_path / "readme.txt").write_text("x")
    assert mvtec_categories(tmp_path) == ["bottle", "cable"]
    ds = build_dataset(DataConfig(name="mvtec", root=str(tmp_path), image_size=SIZE), "train")
    assert Counter(ds.product_types) == {"bottle": 3, "cable": 3}
    only = build_dataset(
        DataConfig(name="mvtec", root=str(tmp_path), categories=["cable"]), "test"
    )
    assert set(only.product_types) == {"cable"} and not only.has_masks


# -------------------------------------------------------------------------------- VisA


def _visa_tree(root: Path) -> Path:
    rows = ["object,split,label,image,mask"]
    for obj in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{obj}/Data/Images/Normal/{i:04d}.JPG"
            _image(root / rel)
            rows.append(f"{obj},{'train' if i < 2 else 'test'},normal,{rel},")
        for i in range(2):
            rel = f"{obj}/Data/Images/Anomaly/{i:03d}.JPG"
            mrel = f"{obj}/Data/Masks/Anomaly/{i:03d}.png"
            _image(root / rel)
            _mask(root / mrel)
            rows.append(f"{obj},test,anomaly,{rel},{mrel}")
    (root / "split_csv").mkdir(parents=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def test_visa_csv_layout(tmp_path: Path) -> None:
    root = _visa_tree(tmp_path)
    assert visa_categories(root) == ["candle", "pcb1"]
    train = visa_records(root, "candle", "train")
    test = visa_records(root, "candle", "test")
    assert len(train) == 2 and all(r.label == NORMAL and r.mask_path is None for r in train)
    assert Counter(r.defect_type for r in test) == {"good": 1, "anomaly": 2}
    assert {r.product_type for r in train + test} == {"candle"}
    for r in test:
        assert (r.mask_path is not None) == (r.label == ANOMALOUS)
        assert Path(r.path).is_file()
    ds = build_dataset(DataConfig(name="visa", root=str(root), image_size=SIZE), "test")
    assert Counter(ds.product_types) == {"candle": 3, "pcb1": 3} and ds.has_masks
    assert torch.equal(ds[1].mask, _box_mask()) and ds[1].label == ANOMALOUS


def test_visa_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="1cls.csv"):
        visa_records(tmp_path, "candle", "train")
    root = _visa_tree(tmp_path)
    with pytest.raises(DataError, match="known: candle, pcb1"):
        visa_records(root, "capsules", "test")
    (root / "pcb1/Data/Images/Anomaly/001.JPG").unlink()
    with pytest.raises(DataError, match=re.escape("pcb1/Data/Images/Anomaly/001.JPG")):
        visa_records(root, "pcb1", "test")


# --------------------------------------------------------------------------------- MTD


def _mtd_tree(root: Path) -> Path:
    free = root / "MT_Free" / "Imgs"
    for exp, n in (("exp1", 3), ("exp2", 2)):
        for i in range(n):
            _image(free / f"{exp}_num_{i}.jpg", mode="L", size=(24, SIZE))
            _mask(free / f"{exp}_num_{i}.png", size=(24, SIZE), box=(0, 0, 0, 0))
    defects = {"MT_Blowhole": ["exp1_num_7"], "MT_Crack": ["exp2_num_8", "exp1_num_9"]}
    for folder, stems in defects.items():
        for stem in stems:
            _image(root / folder / "Imgs" / f"{stem}.jpg", mode="L", size=(24, SIZE))
            _mask(root / folder / "Imgs" / f"{stem}.png", size=(24, SIZE))
    (root / "differnet_train_filenames.txt").write_text("exp1_num_0.jpg\nexp2_num_1.jpg\n\n")
    return root


def test_mtd_layout(tmp_path: Path) -> None:
    root = _mtd_tree(tmp_path)
    train = mtd_records(root, "train")
    test = mtd_records(root, "test")
    assert sorted(Path(r.path).name for r in train) == ["exp1_num_0.jpg", "exp2_num_1.jpg"]
    assert all(r.label == NORMAL and r.defect_type == "good" for r in train)
    assert Counter(r.label for r in test) == {NORMAL: 3, ANOMALOUS: 3}
    assert all(r.mask_path is None for r in train + test if r.label == NORMAL)
    defects = {Path(r.path).stem: (r.defect_type, r.product_type) for r in test if r.label}
    assert defects == {"exp1_num_7": ("blowhole", "exp1"), "exp2_num_8": ("crack", "exp2"),
                       "exp1_num_9": ("crack", "exp1")}
    assert all(r.mask_path == str(Path(r.path).with_suffix(".png")) for r in test if r.label)

    other = tmp_path / "my_list.txt"
    other.write_text("exp1_num_1.jpg\n")
    assert [Path(r.path).name for r in mtd_records(root, "train", other)] == ["exp1_num_1.jpg"]

    ds = build_dataset(DataConfig(name="mtd", root=str(root), image_size=SIZE), "test")
    assert ds.has_masks
    sample = ds[[Path(r.path).stem for r in ds.records].index("exp1_num_7")]
    assert sample.image.shape == (3, SIZE, SIZE) and sample.mask.shape == (1, SIZE, SIZE)
    assert sample.mask.sum() > 0 and sample.label == ANOMALOUS
    exp2 = build_dataset(DataConfig(name="mtd", root=str(root), categories=["exp2"]), "test")
    assert set(exp2.product_types) == {"exp2"} and len(exp2) == 2


def test_mtd_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="MTD root not found"):
        mtd_records(tmp_path / "absent", "train")
    root = _mtd_tree(tmp_path)
    with pytest.raises(DataError, match="MTD training list not found: .*nope.txt"):
        mtd_records(root, "train", root / "nope.txt")
    bad_list = tmp_path / "bad.txt"
    bad_list.write_text("exp1_num_0.jpg\nexp9_num_99.jpg\n")
    with pytest.raises(DataError, match="exp9_num_99.jpg"):
        mtd_records(root, "train", bad_list)
    (root / "MT_Crack" / "Imgs" / "exp2_num_8.png").unlink()
    assert len(mtd_records(root, "train")) == 2  # train never looks at defect folders
    with pytest.raises(DataError, match="without mask: .*exp2_num_8.jpg"):
        mtd_records(root, "test")


@pytest.mark.skipif(not REAL_MTD.is_dir(), reason=f"real MTD not found at {REAL_MTD}")
def test_real_mtd_split_counts() -> None:
    train = mtd_records(REAL_MTD, "train")
    test = mtd_records(REAL_MTD, "test")
    assert len(train) == 761 and all(r.label == NORMAL for r in train)
    assert Counter(r.label for r in test) == {NORMAL: 191, ANOMALOUS: 392}
    assert {r.product_type for r in train + test} == {f"exp{i}" for i in range(7)}
    assert all(r.mask_path is not None for r in test if r.label == ANOMALOUS)


# ------------------------------------------------------------------------------- mixed


def test_mixed_records_prefix_and_duplicates() -> None:
    a = [SampleRecord("a/1.png", NORMAL, "bottle")]
    b = [SampleRecord("b/1.png", ANOMALOUS, "bottle", "crack", "b/1_mask.png")]
    out = mixed_records([("mvtec", a), ("mpdd", b)])
    assert [r.product_type for r in out] == ["mvtec/bottle", "mpdd/bottle"]
    assert out[1].mask_path == "b/1_mask.png" and out[1].defect_type == "crack"
    with pytest.raises(ConfigError, match="duplicate part name 'mvtec'"):
        mixed_records([("mvtec", a), ("mvtec", b)])


def test_part_names_are_unique() -> None:
    parts = [DataConfig(name="mvtec", root="/d/mvtec", categories=["bottle"]),
             DataConfig(name="mvtec", root="/d/mvtec", categories=["bottle"]),
             DataConfig(name="mtd", root="/d/mtd"), DataConfig(name="textures")]
    assert part_names(parts) == ["mvtec-bottle", "mvtec-bottle-2", "mtd-mtd", "textures"]


def test_build_mixed_dataset(tmp_path: Path) -> None:
    _mvtec_tree(tmp_path / "a", "bottle")
    _mvtec_tree(tmp_path / "b", "bottle", masks=False)
    cfg = DataConfig(name="mixed", image_size=SIZE, parts=[
        DataConfig(name="mvtec", root=str(tmp_path / "a")),
        DataConfig(name="mvtec", root=str(tmp_path / "b")),
    ])
    ds = build_dataset(cfg, "test")
    assert Counter(ds.product_types) == {"mvtec-a/bottle": 6, "mvtec-b/bottle": 6}
    assert not ds.has_masks  # part b has no masks, so the mix is image-level only
    last = ds[len(ds) - 1]
    assert last.image.shape == (3, SIZE, SIZE) and last.product_type == "mvtec-b/bottle"
    masked = build_dataset(DataConfig(name="mixed", image_size=SIZE, parts=cfg.parts[:1]), "test")
    assert masked.has_masks
    assert torch.equal(masked[masked.labels.index(ANOMALOUS)].mask, _box_mask())


# ----------------------------------------------------------------------------- factory


def test_factory_unknown_name_and_textures_dispatch() -> None:
    with pytest.raises(ConfigError, match="textures, mtd, mvtec, visa, mixed"):
        build_dataset(DataConfig(name="imagenet"), "train")
    with pytest.raises(ConfigError, match="dataset.root"):
        build_dataset(DataConfig(name="mvtec"), "train")
    ds = build_dataset(DataConfig(name="textures", image_size=32, texture_train_per_type=2,
                                  texture_test_normal_per_type=1,
                                  texture_test_anomalous_per_type=1), "test")
    assert len(ds) == 6 and ds.has_masks and ds[0].image.shape == (3, 32, 32)


# ------------------------------------------------------------------------------ errors


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "gone"))):
        mvtec_records(tmp_path / "gone", "bottle", "train")


def test_missing_category_lists_existing(tmp_path: Path) -> None:
    _mvtec_tree(tmp_path, "bottle")
    with pytest.raises(DataError, match="'screw' not found.*categories in .*: bottle"):
        mvtec_records(tmp_path, "screw", "train")


def test_empty_category(tmp_path: Path) -> None:
    (tmp_path / "hazelnut" / "train" / "good").mkdir(parents=True)
    with pytest.raises(DataError, match=re.escape(str(tmp_path / "hazelnut" / "train"))):
        mvtec_records(tmp_path, "hazelnut", "train")


def test_corrupt_image(tmp_path: Path) -> None:
    bad = tmp_path / "noise.png"
    bad.write_bytes(np.random.default_rng(0).integers(0, 256, 512, dtype=np.uint8).tobytes())
    rec = SampleRecord(str(bad), NORMAL, "p")
    with pytest.raises(DataError, match="noise.png"):
        FileSource().load_image(rec)


def test_truncated_image(tmp_path: Path) -> None:
    good = tmp_path / "full.png"
    Image.fromarray(
        np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    ).save(good)
    cut = tmp_path / "cut.png"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.png.*(corrupt|truncated)|corrupt.*cut.png"):
        read_image(cut)


def test_non_image_file_with_image_extension(tmp_path: Path) -> None:
    fake = tmp_path / "notes.jpg"
    fake.write_text("this is not a picture\n")
    with pytest.raises(DataError, match="notes.jpg"):
        read_image(fake)
    with pytest.raises(DataError, match="not found.*missing.png"):
        read_image(tmp_path / "missing.png")


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    img = _image(tmp_path / "img.png")
    mask = _mask(tmp_path / "img_mask.png", size=(SIZE, SIZE - 2))
    rec = SampleRecord(str(img), ANOMALOUS, "p", "crack", str(mask))
    ds = AnomalyDataset([rec], FileSource(), image_size=16)
    with pytest.raises(DataError, match=r"img_mask.png is 32x30.*img.png is 32x32"):
        ds[0]


def test_mask_without_image(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path)
    _mask(root / "bottle" / "ground_truth" / "broken" / "007_mask.png")
    with pytest.raises(DataError, match="mask without image: .*007_mask.png"):
        mvtec_records(root, "bottle", "test")
    assert len(mvtec_records(root, "bottle", "train")) == 3


def test_anomalous_image_without_mask(tmp_path: Path) -> None:
    root = _mvtec_tree(tmp_path)
    (root / "bottle" / "ground_truth" / "crack" / "001_mask.png").unlink()
    with pytest.raises(DataError, match="without mask: .*crack.001.png"):
        mvtec_records(root, "bottle", "test")


def test_bad_split_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="'val'"):
        mvtec_records(_mvtec_tree(tmp_path), "bottle", "val")
