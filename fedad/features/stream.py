"""A site's training features streamed through one file (``backbone.stream=true``), so that
its memory does not grow with its image count.

Extraction appends each batch's features to a raw file as it goes, never holding more than
a batch; a detector that declares
:class:`~fedad.detectors.capabilities.StreamedFit` reads them back ``backbone.stream_chunk``
images at a time (plain reads at an offset, no memory map: pages read once are the kernel's
page cache, not the process's resident memory). The file lives in a folder of its own under
``backbone.cache_dir`` (else the system's temporary folder) and is deleted with the object
or at exit. A folder left by a killed process (Ray ends simulation actors without their
exit handlers) is removed by the next writer in the same place and by ``fedad-sim`` when
its run ends.

Memory: extraction allocates and frees a few hundred KB per image; glibc's malloc raises its
mmap threshold after the first such free and then serves them from the heap, which it does
not give back, so a process's resident memory grew by about one image's features per image
streamed (5,000 images at 224 px: +2.3 GB, nothing referenced). While a writer extracts,
the threshold is held at 128 KB (``mallopt``; glibc only), so freed buffers return to the
OS and memory stays flat; when it finishes, the threshold goes to 32 MB (glibc's ceiling
for its own adjustment), where the fit's and scoring's temporaries are reused from the heap
(held at 128 KB they were mapped afresh each time: PaDiM's fit and scoring ran 2-4x
slower). The price of giving memory back: pages are faulted in afresh, measured at about
+40 % on reading 2,000 cached images' features and on PaDiM's fit of them (8 s against
6 s, 4.7 s against 3.2 s); a fresh extraction is dominated by the backbone.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import tempfile
import weakref
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

from fedad.errors import ConfigError

_NUMPY = {torch.float32: np.float32, torch.float16: np.float16}
_PREFIX = "fedad-stream-"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters
EXTRACTING = 128 * 1024  # the mmap threshold while a writer extracts
AFTER = 32 * 1024 * 1024  # and after: glibc's DEFAULT_MMAP_THRESHOLD_MAX on 64-bit


def mmap_threshold(size: int) -> bool:
    """Have glibc serve allocations of ``size`` bytes or more by ``mmap`` (a freed one goes
    back to the OS) and trim its heap's free top beyond ``2 * size`` (what its own
    adjustment pairs with that threshold; fixing one fixes both); ``False`` where the C
    library is not glibc."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(_M_MMAP_THRESHOLD, int(size))
                    and libc.mallopt(_M_TRIM_THRESHOLD, 2 * int(size)))
    except (OSError, AttributeError):
        return False


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stream_base(directory: str | Path | None) -> Path:
    """Where writers given ``directory`` (``backbone.cache_dir``) make their folders."""
    return Path(directory).expanduser() if directory else Path(tempfile.gettempdir())


def remove_stale(base: Path) -> None:
    """Remove the stream folders under ``base`` whose writing process is gone."""
    for folder in base.glob(f"{_PREFIX}*"):
        pid = folder.name[len(_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


class FeatureFile:
    """``(N, C, H, W)`` features in one raw C-ordered file, read back chunk by chunk.

    Offers what the code that sizes a detector and counts images reads of a tensor
    (``shape``, ``ndim``, ``len``, ``dtype``, ``nbytes``); the features themselves only by
    :meth:`chunks` (or :meth:`load`, which gives up the point of streaming)."""

    ndim = 4

    def __init__(self, path: Path, shape: tuple[int, int, int, int], dtype: torch.dtype,
                 folder: Path | None = None) -> None:
        self.path = Path(path)
        self.shape = torch.Size(shape)
        self.dtype = dtype
        if folder is not None:  # the writer's folder: gone with the last reference
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(folder), True)

    def __len__(self) -> int:
        return int(self.shape[0])

    def __repr__(self) -> str:
        return f"FeatureFile({self.path}, shape={tuple(self.shape)}, dtype={self.dtype})"

    @property
    def image_nbytes(self) -> int:
        return int(np.prod(self.shape[1:])) * torch.empty(0, dtype=self.dtype).element_size()

    @property
    def nbytes(self) -> int:
        """Bytes on disk (what :meth:`load` would hold in memory)."""
        return len(self) * self.image_nbytes

    def read(self, start: int, stop: int) -> torch.Tensor:
        """Images ``start`` to ``stop`` (exclusive) as a ``(n, C, H, W)`` tensor."""
        start, stop = max(0, start), min(stop, len(self))
        count = max(0, stop - start) * int(np.prod(self.shape[1:]))
        with open(self.path, "rb") as f:
            f.seek(start * self.image_nbytes)
            flat = np.fromfile(f, dtype=_NUMPY[self.dtype], count=count)
        return torch.from_numpy(flat).view(-1, *self.shape[1:])

    def chunks(self, images: int) -> Iterator[torch.Tensor]:
        """The features ``images`` images at a time, in order."""
        if images < 1:
            raise ConfigError(f"backbone.stream_chunk must be >= 1, got {images}")
        for start in range(0, len(self), images):
            yield self.read(start, start + images)

    def load(self) -> torch.Tensor:
        """Every image's features in memory."""
        return self.read(0, len(self))


class FeatureWriter:
    """Appends batches of features ``(n, C, H, W)`` to a new :class:`FeatureFile`."""

    def __init__(self, directory: str | Path | None, dtype: torch.dtype, desc: str) -> None:
        if dtype not in _NUMPY:
            raise ConfigError(f"{desc}: streamed features are float32 or float16, got {dtype}")
        base = stream_base(directory)
        base.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            remove_stale(base)
        mmap_threshold(EXTRACTING)
        self.folder = Path(tempfile.mkdtemp(prefix=f"{_PREFIX}{os.getpid()}-", dir=base))
        self.path = self.folder / "features.bin"
        self.dtype = dtype
        self._file = open(self.path, "wb")  # noqa: SIM115 - closed by finish()
        # an extraction that raises leaves nothing behind once the writer is dropped
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.folder), True)
        self._shape: tuple[int, ...] | None = None
        self._count = 0
        self.desc = desc

    def append(self, batch: torch.Tensor) -> None:
        if self._shape is None:
            self._shape = tuple(batch.shape[1:])
        elif tuple(batch.shape[1:]) != self._shape:
            raise ConfigError(f"{self.desc}: features of shape {tuple(batch.shape[1:])} after "
                              f"{self._shape}")
        self._file.write(memoryview(batch.detach().to("cpu", self.dtype).contiguous().numpy()))
        self._count += int(batch.shape[0])

    def __len__(self) -> int:
        return self._count

    def finish(self) -> FeatureFile:
        self._file.close()
        mmap_threshold(AFTER)
        if self._shape is None:
            shutil.rmtree(self.folder, ignore_errors=True)
            raise ConfigError(f"{self.desc}: the dataset is empty")
        self._cleanup.detach()  # the file's now: deleted with it
        return FeatureFile(self.path, (self._count, *self._shape), self.dtype, self.folder)

    def abandon(self) -> None:
        self._file.close()
        mmap_threshold(AFTER)
        shutil.rmtree(self.folder, ignore_errors=True)

