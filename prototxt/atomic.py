"""Write files so that a failure never leaves a half-written result behind.

Everything the toolkit writes goes to a temporary file in the target's folder
first and is renamed over the target only once complete (rename is atomic on
POSIX). The final file gets ordinary permissions (0666 minus the umask), not
the 0600 of a temporary file.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` if the block succeeds.

    For writers that want a file name (torch.export.save, safetensors, ONNX).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(
        prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent
    )
    os.close(fd)
    try:
        yield tmp_name
        os.chmod(tmp_name, 0o666 & ~_umask())
        os.replace(tmp_name, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only once it is completely written."""
    with atomic_path(path) as tmp_name, open(tmp_name, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())
