"""One writer per output folder.

:func:`output_lock` takes an exclusive ``flock`` on the output folder itself (no lock file is
left behind). The kernel releases it when the holder exits, even after ``kill -9``, so a stale
lock never blocks a later run. A second run into the same folder fails at once with one line
instead of mixing its files with the first run's. Where ``fcntl`` is missing (Windows) the
lock is a no-op.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections.abc import Iterator
from pathlib import Path

from deblurcli.errors import DeblurError, UsageError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]


WAIT_SECONDS = 2.0


class FolderBusyError(DeblurError):
    """Another deblur process is writing into the same output folder."""


@contextlib.contextmanager
def output_lock(
    folder: str | os.PathLike[str], command: str = "deblur", *, shared: bool = False
) -> Iterator[Path]:
    """Hold the writer lock of ``folder`` (created if needed) for the block.

    ``shared`` locks coexist with each other (the shards of one split run writing disjoint
    files) but not with an exclusive one.
    """
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"{folder}: exists and is not a folder")
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    if fcntl is None:
        yield folder
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | os.O_CLOEXEC)
    locked = False
    try:
        if not _acquire(fd, fcntl.LOCK_SH if shared else fcntl.LOCK_EX):
            raise FolderBusyError(
                f"{folder}: another {command} run is writing into this folder; "
                "wait for it to finish or choose another output folder"
            )
        locked = True
        yield folder
    finally:
        if created and locked:  # a refused or failed run leaves no empty folder behind
            with contextlib.suppress(OSError):
                folder.rmdir()  # only succeeds while it is still empty
        os.close(fd)  # closing releases the lock


def _acquire(fd: int, kind: int) -> bool:
    """Try for ``WAIT_SECONDS``: the workers of a run killed a moment ago may still be exiting."""
    deadline = time.monotonic() + WAIT_SECONDS
    while True:
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
            return True
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)
