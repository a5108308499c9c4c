"""Outputs appear whole or not at all.

A regular file (or a new one) is written to an unnamed temporary in the
target's directory (O_TMPFILE: a kill, even SIGKILL, leaves nothing behind),
fsynced, given a name and renamed over the target, and the directory fsynced:
a crash or a power cut leaves the old file or the new one. Where O_TMPFILE is
missing, a hidden `.NAME.XXXXXXXX.part` beside the target stands in for it
and is deleted on any failure.

- A symlink is followed: the file it points to is replaced, the link stays.
- A character device, FIFO or socket (`/dev/stdout`, `/dev/null`, a pipe) is
  written straight to: there is nothing to replace atomically.
- A directory is refused, naming the target (never a temporary).
- Every OSError names the target: `out/vmcore: No space left on device`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO

NAME_MAX = 255


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    shown = os.fspath(path)
    try:
        st: os.stat_result | None = os.stat(path)     # follows a symlink
    except FileNotFoundError:
        st = None
    except OSError as e:
        raise _named(e, shown) from None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, "is a directory, not a file", shown)
    if st is not None and not stat.S_ISREG(st.st_mode):
        try:
            fh = open(path, mode)   # noqa: SIM115 - a device or pipe: write straight to it
        except OSError as e:
            raise _named(e, shown) from None
        with _naming(shown), fh:
            yield fh
        return
    target = Path(os.path.realpath(path))    # a symlink's file is replaced, not the link
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = _temporary(target)
    except OSError as e:
        raise _named(e, shown) from None
    try:
        with _naming(shown):
            os.fchmod(fd, 0o666 & ~_umask())    # mkstemp makes 0600; outputs get the usual mode
            with os.fdopen(fd, mode) as fh:
                yield fh
                fh.flush()
                os.fsync(fh.fileno())
                if tmp is None:                  # O_TMPFILE: give it a name, then rename it over the target
                    tmp = _link_name(target)
                    _link_fd(fh.fileno(), tmp)
            os.replace(tmp, target)
            tmp = None
            _fsync_dir(target.parent)
    finally:
        if tmp is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)


def _temporary(target: Path) -> tuple[int, str | None]:
    """(fd, name): an unnamed O_TMPFILE file (name None), else a hidden named one."""
    flag = getattr(os, "O_TMPFILE", 0)
    if flag:
        try:
            return os.open(target.parent, flag | os.O_WRONLY, 0o600), None
        except OSError as e:
            if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL, errno.ENOENT):
                raise
    fd, tmp = tempfile.mkstemp(prefix=f".{_short(target.name)}.", suffix=".part", dir=target.parent)
    return fd, tmp


def _link_fd(fd: int, name: str) -> None:
    """linkat(AT_FDCWD, "/proc/self/fd/N", AT_FDCWD, name, AT_SYMLINK_FOLLOW) (os.link does not follow)."""
    import ctypes
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd, at_symlink_follow = -100, 0x400
    if libc.linkat(at_fdcwd, f"/proc/self/fd/{fd}".encode(), at_fdcwd, os.fsencode(name), at_symlink_follow):
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), name)


def _link_name(target: Path) -> str:
    return str(target.parent / f".{_short(target.name)}.{os.getpid()}.{os.urandom(4).hex()}.part")


def _short(name: str) -> str:
    """The target's name cut so that `.NAME.XXXXXXXX.part` stays within NAME_MAX bytes."""
    return name.encode()[:NAME_MAX - 32].decode("utf-8", "ignore")


@contextlib.contextmanager
def _naming(shown: str) -> Iterator[None]:
    try:
        yield
    except OSError as e:
        raise _named(e, shown) from None


def _named(e: OSError, shown: str) -> OSError:
    """The same error naming the target the user gave (not a temporary)."""
    if e.errno is None:
        return e
    return type(e)(e.errno, e.strerror or os.strerror(e.errno), shown)


def _fsync_dir(d: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as fh:
        fh.write(text)
