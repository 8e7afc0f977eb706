"""Reading images and masks from disk, with errors that name the file and the problem."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from fedad.data.sample import SampleRecord
from fedad.errors import ConfigError, DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
MASK_THRESHOLD = 127
SPLITS = ("train", "test")


def check_split(split: str) -> str:
    """Return ``split`` if it is ``train`` or ``test``.

    Raises:
        ConfigError: any other value.
    """
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    return split


def is_hidden(path: str | Path) -> bool:
    """Whether the file or folder name starts with a dot."""
    return Path(path).name.startswith(".")


def is_image_file(path: str | Path) -> bool:
    """Whether ``path`` is a visible file with an image extension (case-insensitive)."""
    p = Path(path)
    return p.suffix.lower() in IMAGE_EXTENSIONS and not is_hidden(p) and p.is_file()


def require_dir(path: str | Path, what: str) -> Path:
    """Return ``path`` as a ``Path`` if it is a directory.

    Raises:
        DataError: ``"<what> not found: <path>"`` (or "is not a directory").
    """
    p = Path(path)
    if p.is_dir():
        return p
    if p.exists():
        raise DataError(f"{what} is not a directory: {p}")
    raise DataError(f"{what} not found: {p}")


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly in ``folder``, sorted by name.

    Extensions ``.png .jpg .jpeg .bmp .tif .tiff`` in any case; hidden files (``.*``, e.g.
    macOS ``._x.png`` resource forks) are skipped.

    Raises:
        DataError: the folder does not exist.
    """
    d = require_dir(folder, "image folder")
    return sorted(p for p in d.iterdir() if is_image_file(p))


def _gray_uint8(img: Image.Image) -> np.ndarray | None:
    """High-bit-depth (16/32-bit int, float) image -> ``(H, W)`` uint8, else ``None``."""
    mode = img.mode
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        finite = arr[np.isfinite(arr)]
        if finite.size and finite.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.nan_to_num(np.rint(arr)), 0, 255).astype(np.uint8)
    if mode == "I" or mode.startswith("I;16"):
        arr = np.asarray(img).astype(np.float64) / 257.0  # 65535 -> 255
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    return None


def _read(path: Path, kind: str, to_array: Callable[[Image.Image], np.ndarray]) -> np.ndarray:
    """Open ``path`` with Pillow and convert it with ``to_array`` inside the open file."""
    try:
        with Image.open(path) as img:
            img.load()
            return to_array(img)
    except FileNotFoundError as exc:
        raise DataError(f"{kind} file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise DataError(f"{kind} path is a directory, not a file: {path}") from exc
    except PermissionError as exc:
        raise DataError(f"{kind} file is not readable (permission denied): {path}") from exc
    except UnidentifiedImageError as exc:
        raise DataError(
            f"{kind} file is not a readable image (unknown or corrupt format): {path}"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DataError(f"{kind} file is too large to decode safely: {path} ({exc})") from exc
    except DataError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, ... on bad data
        raise DataError(
            f"{kind} file is corrupt or truncated: {path} ({type(exc).__name__}: {exc})"
        ) from exc


def _image_to_rgb(img: Image.Image) -> np.ndarray:
    gray = _gray_uint8(img)
    if gray is not None:
        return np.repeat(gray[:, :, None], 3, axis=2)
    if img.mode != "RGB":
        img = img.convert("RGB")  # L, 1, P, RGBA (alpha dropped), LA, CMYK, YCbCr, ...
    return np.asarray(img, dtype=np.uint8).copy()


def _mask_to_bool(img: Image.Image) -> np.ndarray:
    gray = _gray_uint8(img)
    if gray is None:
        gray = np.asarray(img if img.mode == "L" else img.convert("L"), dtype=np.uint8)
    return gray > MASK_THRESHOLD


def read_image(path: str | Path) -> np.ndarray:
    """Read an image file as an ``(H, W, 3)`` uint8 RGB array.

    Grayscale, palette, RGBA (alpha dropped), CMYK and 16-bit / float images are converted;
    16-bit values are scaled to 8 bits.

    Raises:
        DataError: the file is missing, not an image, corrupt or truncated (names the path).
    """
    p = Path(path)
    return _read(p, "image", _image_to_rgb)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a mask file of any mode as an ``(H, W)`` bool array: defective where > 127.

    Raises:
        DataError: the file is missing, not an image, corrupt or truncated (names the path).
    """
    p = Path(path)
    return _read(p, "mask", _mask_to_bool)


class FileSource:
    """Image source for records whose ``path`` / ``mask_path`` are files on disk.

    Args:
        root: directory that relative record paths are resolved against (default: the
            current directory, i.e. paths are used as they are).
    """

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else None

    def _resolve(self, path: str) -> Path:
        p = Path(path)
        return self.root / p if self.root is not None and not p.is_absolute() else p

    def load_image(self, record: SampleRecord) -> np.ndarray:
        """Return the record's image as an ``(H, W, 3)`` uint8 RGB array."""
        return read_image(self._resolve(record.path))

    def load_mask(self, record: SampleRecord, image_hw: tuple[int, int]) -> np.ndarray | None:
        """Return the record's mask as ``(H, W)`` bool, or ``None`` if it has no mask file.

        Raises:
            DataError: the mask cannot be read, or its size differs from the image's.
        """
        if record.mask_path is None:
            return None
        mask_path = self._resolve(record.mask_path)
        mask = read_mask(mask_path)
        h, w = int(image_hw[0]), int(image_hw[1])
        if mask.shape != (h, w):
            mh, mw = mask.shape
            raise DataError(
                f"mask size differs from its image: mask {mask_path} is {mw}x{mh} (WxH) but "
                f"image {self._resolve(record.path)} is {w}x{h}"
            )
        return mask
