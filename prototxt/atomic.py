"""Write files so that a failure never leaves a half-written result behind.

Everything the toolkit writes goes to a hidden temporary file in the target's
folder first and is renamed over the target only once complete (rename is
atomic on POSIX). Targets are resolved first: a symlink is written through (its
target is replaced, the link stays), and anything that is not a regular file
(a directory, device, FIFO or socket) is refused instead of being replaced by
a regular file. A replaced file keeps its permission bits; a new one gets
0666 minus the umask, not the 0600 of a temporary file. A file that did not
exist when writing began is created without replacing anything (a hard link,
which fails if the name is taken), so two runs writing one new output cannot
silently replace each other's file. Temporary files are removed on exceptions,
Ctrl-C and SIGTERM/SIGHUP alike; their names stay within NAME_MAX however long
the target's name.

`same_file` and `check_writable` are the checks the command-line tools make on
every output before they start (see `senet_repro.cli._common.guard_outputs`).
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from types import FrameType
from typing import BinaryIO

from .errors import OutputError

StrPath = str | os.PathLike[str]

# Temporary files not yet renamed into place, removed by the signal handler.
_pending: set[str] = set()
_previous_handlers: dict[int, object] = {}
_owner = [os.getpid()]  # the process whose temporary files `_pending` lists
_TERMINATING = (signal.SIGTERM, signal.SIGHUP)
_NAME_MAX = 255  # bytes in one path component (Linux, macOS)
_RANDOM = 8  # characters mkstemp adds


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "not a regular file"


def resolve_target(path: StrPath) -> Path:
    """The file a write to `path` must replace: symlinks followed; only regular files or nothing.

    Raises `OutputError` for a directory, device, FIFO or socket, and for a parent
    that exists but is not a directory.
    """
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    except NotADirectoryError:
        raise OutputError(f"{path}: cannot write it, a parent of it is a file, not a folder") from None
    except OSError as exc:  # a symlink loop, a name too long, no permission to look
        raise OutputError(f"{path}: cannot write it ({exc.strerror})") from None
    if mode is not None and not stat.S_ISREG(mode):
        link = f" (a symlink to {target})" if Path(path).is_symlink() else ""
        raise OutputError(f"{path}{link}: is {_kind(mode)}; refusing to replace it with a regular file")
    for parent in target.parents:
        if parent.exists():
            if not parent.is_dir():
                raise OutputError(f"{path}: cannot write it, {parent} is a file, not a folder")
            break
    return target


def check_writable(path: StrPath, *, force: bool) -> None:
    """Refuse an output that is not a regular file, an existing file without `force`, or one
    in a folder we may not write (found now, not after the work)."""
    target = resolve_target(path)
    if target.exists() and not force:
        raise OutputError(f"{path}: exists; refusing to replace a file without --force")
    folder = next(parent for parent in target.parents if parent.exists())
    if not os.access(folder, os.W_OK | os.X_OK):
        raise OutputError(f"{path}: cannot write it, no permission to write in {folder}")


def same_file(a: StrPath, b: StrPath) -> bool:
    """Whether `a` and `b` are one file: same path after symlinks, or same inode (hard links)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist (yet)
        return False


def _temporary_name_parts(target: Path) -> tuple[str, str]:
    """mkstemp's prefix and suffix for `target`: hidden, keeping its suffix (writers such as
    torch.export.save look at it), the whole name within `_NAME_MAX` bytes."""
    suffix = f".tmp{target.suffix}" if len(os.fsencode(target.suffix)) <= 32 else ".tmp"
    budget = _NAME_MAX - len(os.fsencode(suffix)) - _RANDOM - 2  # the dots around the name
    name = target.name
    while len(os.fsencode(name)) > budget:
        name = name[:-1]
    return f".{name}.", suffix


def _link_new(name: str, target: Path) -> None:
    """Put `name` at `target`, which did not exist when writing began; never replace a file
    that appeared since (another run writing the same output)."""
    try:
        os.link(name, target)
    except FileExistsError:
        raise OutputError(
            f"{target}: appeared while it was being written (another run?); left as it is"
        ) from None
    except OSError as exc:
        if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EMLINK):
            raise
        os.replace(name, target)  # a filesystem without hard links: rename is all there is
        return
    os.unlink(name)


def _remove(name: str) -> None:
    """Delete a temporary file or folder (`scratch_dir`), whatever is left of it."""
    if os.path.isdir(name) and not os.path.islink(name):
        shutil.rmtree(name, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            os.unlink(name)


def _remove_pending_and_reraise(signum: int, frame: FrameType | None) -> None:
    if os.getpid() == _owner[0]:  # a forked child (a data loader worker) leaves the parent's files alone
        for name in list(_pending):
            _remove(name)
    _pending.clear()
    previous = _previous_handlers.get(signum, signal.SIG_DFL)
    signal.signal(signum, previous)  # type: ignore[arg-type]
    os.kill(os.getpid(), signum)


def _track(name: str) -> None:
    """Register a temporary file; the first one installs the cleanup on SIGTERM/SIGHUP."""
    if not _pending and threading.current_thread() is threading.main_thread():
        _owner[0] = os.getpid()
        for signum in _TERMINATING:
            previous = signal.getsignal(signum)
            if previous is not signal.SIG_IGN:  # a process told to ignore it keeps ignoring it
                _previous_handlers[signum] = signal.SIG_DFL if previous is None else previous
                signal.signal(signum, _remove_pending_and_reraise)
    _pending.add(name)


def _untrack(name: str) -> None:
    _pending.discard(name)
    if not _pending and threading.current_thread() is threading.main_thread():
        for signum, previous in _previous_handlers.items():
            signal.signal(signum, previous)  # type: ignore[arg-type]
        _previous_handlers.clear()


@contextlib.contextmanager
def atomic_paths(paths: Iterable[StrPath]) -> Iterator[list[str]]:
    """Yield temporary paths to write; they replace `paths` together once the block succeeds.

    For writers that want a file name (torch.export.save, safetensors, ONNX) and for
    results made of several files, which appear only once all are complete.
    """
    targets = [resolve_target(path) for path in paths]
    new = [not target.exists() for target in targets]
    temporaries: list[str] = []
    created: list[Path] = []
    try:
        for target in targets:
            try:
                target.parent.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise OutputError(f"{target}: cannot create its folder") from None
            prefix, suffix = _temporary_name_parts(target)
            fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
            os.close(fd)
            _track(name)
            temporaries.append(name)
        yield list(temporaries)
        for target, name, is_new in zip(targets, temporaries, new):
            try:
                mode = stat.S_IMODE(target.stat().st_mode)
            except FileNotFoundError:
                mode = 0o666 & ~_umask()
            os.chmod(name, mode)
            if is_new:
                _link_new(name, target)
                created.append(target)
            else:
                os.replace(name, resolve_target(target))
            _untrack(name)
        created.clear()
    finally:
        for target in created:  # a later file of the set could not be placed: none of them stays
            with contextlib.suppress(OSError):
                os.unlink(target)
        for name in temporaries:
            if name in _pending:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name)
                _untrack(name)


@contextlib.contextmanager
def atomic_path(path: StrPath) -> Iterator[str]:
    """Yield a temporary path to write; it replaces `path` if the block succeeds."""
    with atomic_paths([path]) as (name,):
        yield name


@contextlib.contextmanager
def atomic_writer(path: StrPath) -> Iterator[BinaryIO]:
    """Yield a binary file that replaces `path` only once it is completely written."""
    with atomic_path(path) as tmp_name, open(tmp_name, "wb") as handle:
        yield handle
        handle.flush()
        os.fsync(handle.fileno())


@contextlib.contextmanager
def scratch_path(beside: StrPath) -> Iterator[str]:
    """Yield a hidden temporary file beside `beside` that is removed at exit, SIGTERM included
    (a copy to check before the real output is committed)."""
    target = Path(beside)
    prefix, suffix = _temporary_name_parts(target)
    fd, name = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=target.parent)
    os.close(fd)
    _track(name)
    try:
        yield name
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        _untrack(name)


@contextlib.contextmanager
def scratch_dir(parent: StrPath) -> Iterator[Path]:
    """Yield a hidden temporary folder in `parent` (created if needed) to build a result of many
    files in; the caller renames its parts into place. Whatever is left is removed at exit,
    SIGTERM included."""
    Path(parent).mkdir(parents=True, exist_ok=True)
    name = tempfile.mkdtemp(prefix=".", suffix=".tmp", dir=parent)
    _track(name)
    try:
        yield Path(name)
    finally:
        _remove(name)
        _untrack(name)
