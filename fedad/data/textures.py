"""The embedded ``textures`` dataset: offline, deterministic, built in well under a second.

Crops of scikit-image's bundled 512x512 grayscale photos (``brick``, ``grass``, ``gravel``;
no download) are the images; the texture name is the product type. Each photo is split by
columns: **train** crops come from the left 60% (columns ``[0, 307)``), **test** crops from
the right 40% (columns ``[307, 512)``), so a test normal is never a copy of a train crop.

Normal crops get light augmentation (brightness/contrast jitter, horizontal/vertical flips)
and are returned as ``(S, S, 3)`` uint8 with the gray value replicated to RGB. Anomalous crops
are fresh normal test crops plus one synthetic defect, with its exact pixel mask:

* ``cut_paste``: a randomly rotated rectangle filled with pixels of *another* bundled texture.
* ``perlin_blob``: a thresholded fractal Perlin noise field; inside it either another texture
  is blended in or the intensity is shifted strongly (a stain).
* ``scratch``: a random cubic Bezier curve a few pixels wide, brighter or darker.

The mask is the region the defect was applied to: every pixel outside it is byte-identical to
the underlying normal crop, and inside it the defect changes the pixels substantially (mean
absolute change of tens of gray levels). Defects cover about 1-10% of the crop. Defect types
are cycled per texture (``cut_paste``, ``perlin_blob``, ``scratch``, ``cut_paste``, ...).

Every texture and split draws from its own random stream derived from ``cfg.seed`` and the
texture's name, so the same seed gives byte-identical arrays and adding a texture type or
changing one count leaves the other streams unchanged.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage

from fedad.config.schema import DataConfig
from fedad.data.dataset import AnomalyDataset
from fedad.data.sample import ANOMALOUS, NORMAL, SampleRecord
from fedad.errors import ConfigError, DataError

TEXTURE_NAMES: tuple[str, ...] = ("brick", "grass", "gravel")
DEFECT_TYPES: tuple[str, ...] = ("cut_paste", "perlin_blob", "scratch")
SPLITS: tuple[str, ...] = ("train", "test")

#: Fraction of a photo's columns used for train crops; test crops use the rest.
TRAIN_COLUMN_FRACTION = 0.6
_PHOTO_SIZE = 512
_SPLIT_COLUMN = int(_PHOTO_SIZE * TRAIN_COLUMN_FRACTION)  # 307
MIN_CROP = 16
#: Largest crop the test region (columns 307..511) can hold.
MAX_CROP = _PHOTO_SIZE - _SPLIT_COLUMN  # 205

#: Accepted defect area, as a fraction of the crop (defects are redrawn until they fit).
_MIN_AREA = 0.008
_MAX_AREA = 0.10
_MAX_TRIES = 50

Entry = tuple[np.ndarray, np.ndarray | None]


# --------------------------------------------------------------------------- sources


@cache
def _photo(name: str) -> np.ndarray:
    """Return the bundled grayscale photo ``name`` as a read-only ``(512, 512)`` uint8 array."""
    import skimage.data

    img = np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)
    if img.ndim != 2 or img.shape[0] < _PHOTO_SIZE or img.shape[1] < _PHOTO_SIZE:
        raise DataError(f"skimage.data.{name}() has unexpected shape {img.shape}")
    img = np.ascontiguousarray(img[:_PHOTO_SIZE, :_PHOTO_SIZE])
    img.setflags(write=False)
    return img


def _validate(cfg: DataConfig, split: str) -> None:
    """Raise ``DataError`` for a bad split and ``ConfigError`` for bad texture settings."""
    if split not in SPLITS:
        raise DataError(f"textures: split must be 'train' or 'test', got {split!r}")
    types = list(cfg.texture_types)
    if not types:
        raise ConfigError(f"dataset.texture_types is empty; choose from {list(TEXTURE_NAMES)}")
    unknown = [t for t in types if t not in TEXTURE_NAMES]
    if unknown:
        raise ConfigError(
            f"dataset.texture_types has unknown texture(s) {unknown}; valid names: "
            f"{list(TEXTURE_NAMES)}"
        )
    if len(set(types)) != len(types):
        raise ConfigError(f"dataset.texture_types has duplicates: {types}")
    crop = cfg.texture_crop
    if not isinstance(crop, int) or not MIN_CROP <= crop <= MAX_CROP:
        raise ConfigError(
            f"dataset.texture_crop must be an int in [{MIN_CROP}, {MAX_CROP}] (the test region "
            f"is {MAX_CROP} px wide), got {crop!r}"
        )
    for field in (
        "texture_train_per_type",
        "texture_test_normal_per_type",
        "texture_test_anomalous_per_type",
    ):
        value = getattr(cfg, field)
        if not isinstance(value, int) or value < 0:
            raise ConfigError(f"dataset.{field} must be a non-negative int, got {value!r}")


def _stream(seed: int, texture: str, split: str) -> np.random.SeedSequence:
    """A seed sequence unique to ``(seed, texture, split)``, stable across processes."""
    return np.random.SeedSequence(
        [int(seed) % 2**64, zlib.crc32(texture.encode()), SPLITS.index(split)]
    )


# --------------------------------------------------------------------------- crops


def _window(rng: np.random.Generator, photo: np.ndarray, size: int, columns: tuple[int, int]
            ) -> np.ndarray:
    """A random ``size`` x ``size`` window of ``photo`` within ``columns`` (float32)."""
    c0, c1 = columns
    y = int(rng.integers(0, photo.shape[0] - size + 1))
    x = int(rng.integers(c0, c1 - size + 1))
    return photo[y:y + size, x:x + size].astype(np.float32)


def _normal_crop(rng: np.random.Generator, texture: str, split: str, size: int) -> np.ndarray:
    """A random augmented crop of ``texture``'s ``split`` region as ``(S, S)`` uint8."""
    columns = (0, _SPLIT_COLUMN) if split == "train" else (_SPLIT_COLUMN, _PHOTO_SIZE)
    crop = _window(rng, _photo(texture), size, columns)
    contrast = rng.uniform(0.9, 1.1)
    brightness = rng.uniform(-10.0, 10.0)
    mean = float(crop.mean())
    crop = (crop - mean) * contrast + mean + brightness
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    if rng.random() < 0.5:
        crop = crop[::-1, :]
    return _to_uint8(crop)


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.clip(np.rint(x), 0, 255).astype(np.uint8))


def _to_rgb(gray: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(np.repeat(gray[:, :, None], 3, axis=2))


def _donor(rng: np.random.Generator, texture: str, size: int) -> np.ndarray:
    """A random window of another bundled texture (random 90-degree rotation), float32."""
    others = [t for t in TEXTURE_NAMES if t != texture]
    other = others[int(rng.integers(len(others)))]
    win = _window(rng, _photo(other), size, (0, _PHOTO_SIZE))
    return np.rot90(win, int(rng.integers(4)))


# --------------------------------------------------------------------------- Perlin noise


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def perlin_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator
                 ) -> np.ndarray:
    """Classic 2-D gradient (Perlin) noise.

    Args:
        shape: output ``(H, W)``.
        res: number of lattice cells along each axis.
        rng: source of the random gradient directions.

    Returns:
        ``(H, W)`` float array, roughly in ``[-0.7, 0.7]``, zero on lattice points.
    """
    h, w = shape
    ry, rx = res
    angles = rng.uniform(0.0, 2.0 * np.pi, size=(ry + 1, rx + 1))
    gy, gx = np.sin(angles), np.cos(angles)
    ys = np.arange(h) * (ry / h)
    xs = np.arange(w) * (rx / w)
    yi, xi = ys.astype(np.int64), xs.astype(np.int64)
    yf, xf = (ys - yi)[:, None], (xs - xi)[None, :]
    yi, xi = yi[:, None], xi[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        return gy[yi + dy, xi + dx] * (yf - dy) + gx[yi + dy, xi + dx] * (xf - dx)

    u, v = _fade(xf), _fade(yf)
    top = corner(0, 0) + u * (corner(0, 1) - corner(0, 0))
    bottom = corner(1, 0) + u * (corner(1, 1) - corner(1, 0))
    return top + v * (bottom - top)


def fractal_noise(shape: tuple[int, int], res: tuple[int, int], rng: np.random.Generator,
                  octaves: int = 3, persistence: float = 0.5) -> np.ndarray:
    """Sum of ``octaves`` Perlin layers, each of double resolution and ``persistence`` weight."""
    out = np.zeros(shape, dtype=np.float64)
    amplitude = 1.0
    for o in range(octaves):
        out += amplitude * perlin_noise(shape, (res[0] * 2**o, res[1] * 2**o), rng)
        amplitude *= persistence
    return out


# --------------------------------------------------------------------------- defects


def _cut_paste(rng: np.random.Generator, base: np.ndarray, texture: str
               ) -> tuple[np.ndarray, np.ndarray]:
    s = base.shape[0]
    area = rng.uniform(0.02, 0.08) * s * s
    aspect = np.exp(rng.uniform(np.log(0.4), np.log(2.5)))
    h, w = np.sqrt(area * aspect), np.sqrt(area / aspect)
    angle = rng.uniform(0.0, np.pi)
    cy, cx = rng.uniform(0.2 * s, 0.8 * s, size=2)
    yy, xx = np.mgrid[0:s, 0:s].astype(np.float64) + 0.5
    dy, dx = yy - cy, xx - cx
    along = dx * np.cos(angle) + dy * np.sin(angle)
    across = -dx * np.sin(angle) + dy * np.cos(angle)
    mask = (np.abs(along) <= w / 2) & (np.abs(across) <= h / 2)
    donor = _donor(rng, texture, s)
    # Shift the patch's brightness away from the surrounding texture so it stands out.
    shift = rng.uniform(20.0, 45.0)
    if mask.any() and float(base[mask].mean()) > 128.0:
        shift = -shift
    return donor + shift, mask


def _perlin_blob(rng: np.random.Generator, base: np.ndarray, texture: str
                 ) -> tuple[np.ndarray, np.ndarray]:
    s = base.shape[0]
    cells = int(rng.integers(2, 5))
    noise = fractal_noise((s, s), (cells, cells), rng, octaves=3)
    # A broad Gaussian bump at a random centre gathers the noise peaks into one main,
    # irregularly shaped blob (plus at most a few satellites) instead of scattered specks.
    cy, cx = rng.uniform(0.2 * s, 0.8 * s, size=2)
    sigma = rng.uniform(0.12, 0.2) * s
    yy, xx = np.mgrid[0:s, 0:s]
    bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2.0 * sigma**2))
    field = noise / (noise.std() + 1e-12) + 4.0 * bump
    fraction = rng.uniform(0.02, 0.08)
    mask = field > np.quantile(field, 1.0 - fraction)
    # Drop specks too small to see (< 0.2% of the crop).
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = np.bincount(labels.ravel(), minlength=n + 1)
        keep = sizes >= 0.002 * s * s
        keep[0] = False
        mask = keep[labels]
    p = base.astype(np.float32)
    if rng.random() < 0.5:
        alpha = rng.uniform(0.85, 1.0)
        donor = _donor(rng, texture, s)
        shift = rng.uniform(15.0, 35.0) * (1 if float(p[mask].mean()) < 128.0 else -1)
        return (1.0 - alpha) * p + alpha * (donor + shift), mask
    delta = rng.uniform(60.0, 100.0)
    sign = 1.0 if float(p[mask].mean()) + delta <= 230.0 else -1.0
    if sign < 0 and float(p[mask].mean()) - delta < 25.0:
        sign = 1.0
    return p + sign * delta, mask


def _bezier(rng: np.random.Generator, s: int) -> np.ndarray:
    """Points ``(N, 2)`` (row, col) on a random cubic Bezier curve inside the crop."""
    start = rng.uniform(0.1 * s, 0.9 * s, size=2)
    theta = rng.uniform(0.0, 2.0 * np.pi)
    length = rng.uniform(0.45, 0.85) * s
    end = np.clip(start + length * np.array([np.sin(theta), np.cos(theta)]), 0.05 * s, 0.95 * s)
    normal = np.array([np.cos(theta), -np.sin(theta)])
    c1 = start + (end - start) / 3 + normal * rng.uniform(-0.25, 0.25) * length
    c2 = start + 2 * (end - start) / 3 + normal * rng.uniform(-0.25, 0.25) * length
    t = np.linspace(0.0, 1.0, 8 * s)[:, None]
    return ((1 - t) ** 3 * start + 3 * (1 - t) ** 2 * t * c1 + 3 * (1 - t) * t**2 * c2
            + t**3 * end)


def _scratch(rng: np.random.Generator, base: np.ndarray, texture: str
             ) -> tuple[np.ndarray, np.ndarray]:
    s = base.shape[0]
    width = max(3.0, rng.uniform(0.02, 0.035) * s)
    pts = np.clip(np.rint(_bezier(rng, s)).astype(np.int64), 0, s - 1)
    line = np.zeros((s, s), dtype=bool)
    line[pts[:, 0], pts[:, 1]] = True
    mask = ndimage.distance_transform_edt(~line) <= width / 2
    p = base.astype(np.float32)
    bright = rng.random() < 0.5
    stroke_mean = float(p[mask].mean())
    if bright and stroke_mean > 165.0:
        bright = False
    elif not bright and stroke_mean < 90.0:
        bright = True
    target = rng.uniform(225.0, 255.0) if bright else rng.uniform(0.0, 30.0)
    alpha = rng.uniform(0.8, 0.95)
    grain = rng.normal(0.0, 6.0, size=(s, s))
    return (1.0 - alpha) * p + alpha * (target + grain), mask


_DEFECTS = {"cut_paste": _cut_paste, "perlin_blob": _perlin_blob, "scratch": _scratch}


def apply_defect(base: np.ndarray, defect_type: str, rng: np.random.Generator,
                 texture: str) -> tuple[np.ndarray, np.ndarray]:
    """Add one synthetic defect to a grayscale crop.

    Args:
        base: ``(S, S)`` uint8 normal crop.
        defect_type: one of :data:`DEFECT_TYPES`.
        rng: random generator (the only source of randomness).
        texture: the crop's texture; cut-paste and blob donors come from the other textures.

    Returns:
        ``(image, mask)``: the ``(S, S)`` uint8 defective crop and the ``(S, S)`` bool mask of
        the defect. Pixels outside the mask equal ``base`` exactly. The defect is redrawn
        until it covers 0.8%-10% of the crop.
    """
    if defect_type not in _DEFECTS:
        raise DataError(f"unknown defect type {defect_type!r}; valid: {list(DEFECT_TYPES)}")
    s = base.shape[0]
    for _ in range(_MAX_TRIES):
        values, mask = _DEFECTS[defect_type](rng, base, texture)
        if _MIN_AREA <= mask.mean() <= _MAX_AREA:
            break
    else:  # pragma: no cover - the draws above land in range almost always
        raise DataError(f"could not draw a {defect_type} defect on a {s}x{s} crop")
    out = base.copy()
    out[mask] = _to_uint8(values[mask])
    return out, mask


# --------------------------------------------------------------------------- dataset


def generate_textures(cfg: DataConfig, split: str
                      ) -> tuple[list[SampleRecord], dict[str, Entry]]:
    """Generate the records and pixels of one split of the embedded textures set.

    Args:
        cfg: data config; uses ``seed``, ``texture_types``, ``texture_crop`` and the
            ``texture_*_per_type`` counts.
        split: ``"train"`` (normals only) or ``"test"`` (normals, then anomalies).

    Returns:
        ``(records, arrays)`` where ``arrays[path] = (image, mask)``: ``image`` is
        ``(S, S, 3)`` uint8 and ``mask`` an ``(S, S)`` bool array, ``None`` for normals.

    Raises:
        DataError: ``split`` is not ``train`` or ``test``.
        ConfigError: unknown texture name or invalid crop size / counts.
    """
    _validate(cfg, split)
    size = cfg.texture_crop
    records: list[SampleRecord] = []
    arrays: dict[str, Entry] = {}
    for texture in cfg.texture_types:
        normal_seq, anomalous_seq = _stream(cfg.seed, texture, split).spawn(2)
        rng = np.random.default_rng(normal_seq)
        n_normal = cfg.texture_train_per_type if split == "train" else (
            cfg.texture_test_normal_per_type)
        for i in range(n_normal):
            path = f"textures:{texture}/{split}/good/{i:03d}"
            records.append(SampleRecord(path, NORMAL, texture, "good", None))
            arrays[path] = (_to_rgb(_normal_crop(rng, texture, split, size)), None)
        if split != "test":
            continue
        rng = np.random.default_rng(anomalous_seq)
        counters = dict.fromkeys(DEFECT_TYPES, 0)
        for i in range(cfg.texture_test_anomalous_per_type):
            defect = DEFECT_TYPES[i % len(DEFECT_TYPES)]
            base = _normal_crop(rng, texture, split, size)
            image, mask = apply_defect(base, defect, rng, texture)
            path = f"textures:{texture}/{split}/{defect}/{counters[defect]:03d}"
            counters[defect] += 1
            records.append(SampleRecord(path, ANOMALOUS, texture, defect, path + "#mask"))
            arrays[path] = (_to_rgb(image), mask)
    return records, arrays


class InMemorySource:
    """An :class:`~fedad.data.dataset.ImageSource` over arrays keyed by record path.

    Args:
        arrays: ``path -> (image, mask)`` as :func:`generate_textures` returns it.
    """

    def __init__(self, arrays: dict[str, Entry]) -> None:
        self.arrays = dict(arrays)

    def _entry(self, record: SampleRecord) -> Entry:
        try:
            return self.arrays[record.path]
        except KeyError:
            raise DataError(f"no in-memory image for path {record.path!r}") from None

    def load_image(self, record: SampleRecord) -> np.ndarray:
        """Return the ``(H, W, 3)`` uint8 image of ``record``."""
        return self._entry(record)[0]

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        """Return the ``(H, W)`` bool mask of ``record``, or ``None`` for a normal image."""
        mask = self._entry(record)[1]
        if mask is not None and tuple(mask.shape) != tuple(image_hw):
            raise DataError(
                f"mask of {record.path!r} has shape {mask.shape}, image is {tuple(image_hw)}"
            )
        return mask


def build_texture_dataset(cfg: DataConfig, split: str) -> AnomalyDataset:
    """The embedded textures split as an :class:`AnomalyDataset` (``has_masks=True``)."""
    records, arrays = generate_textures(cfg, split)
    return AnomalyDataset(records, InMemorySource(arrays), image_size=cfg.scored_size(),
                          has_masks=True)


def save_preview(cfg: DataConfig, path: str | Path, n_normal: int = 2, n_anomalous: int = 4,
                 textures: Sequence[str] | None = None) -> Path:
    """Write a PNG grid of test crops: one row per texture, normals then anomalies.

    Anomalies are outlined in red along their mask and titled with their defect type.

    Args:
        cfg: data config (its seed and crop size are used).
        path: output PNG file.
        n_normal, n_anomalous: crops per row of each kind (limited by the config's counts).
        textures: texture rows; default ``cfg.texture_types``.

    Returns:
        The written path.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    records, arrays = generate_textures(cfg, "test")
    rows = list(textures or cfg.texture_types)
    cols = max(1, n_normal + n_anomalous)
    fig = Figure(figsize=(2.0 * cols, 2.1 * len(rows)), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(rows), cols, squeeze=False)
    for r, texture in enumerate(rows):
        mine = [rec for rec in records if rec.product_type == texture]
        chosen = ([rec for rec in mine if rec.is_normal][:n_normal]
                  + [rec for rec in mine if not rec.is_normal][:n_anomalous])
        for c in range(cols):
            ax = axes[r][c]
            ax.set_axis_off()
            if c >= len(chosen):
                continue
            rec = chosen[c]
            image, mask = arrays[rec.path]
            ax.imshow(image, interpolation="nearest")
            if mask is not None:
                ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
            ax.set_title(f"{texture}: {rec.defect_type}", fontsize=8)
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    return out
