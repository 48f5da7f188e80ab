"""Worker processes die with their parent (the rule "workers die with their parent").

A ``kill -9`` of ``deblur blur`` or ``deblur train`` gives its workers no chance to be told;
left alone they block forever on a pipe nobody writes to, holding memory and, for ``blur``,
the output folder. Each worker calls :func:`die_with_parent` when it starts:

* on Linux the kernel sends it SIGKILL when the parent dies (``prctl(PR_SET_PDEATHSIG)``);
* everywhere, a daemon thread polls the parent's pid and ends the worker once it changes
  (the fallback where prctl is missing, and a second net if it fails).

Linux sends the death signal when the parent *thread* that started the worker exits, so
workers must be started from a thread that lives as long as they do (the main thread: both
the blur pool and the DataLoader iterator are created there).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
import threading

_PR_SET_PDEATHSIG = 1
POLL_SECONDS = 0.5


def die_with_parent(parent_pid: int) -> None:
    """Make this process end when ``parent_pid`` (the process that started it) ends."""
    _set_parent_death_signal()
    if os.getppid() != parent_pid:  # the parent died before the signal was armed
        os._exit(1)
    watchdog = threading.Thread(
        target=_watch_parent, args=(parent_pid,), name="deblur-parent-watchdog", daemon=True
    )
    watchdog.start()


def _set_parent_death_signal() -> bool:
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        return libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def _watch_parent(parent_pid: int) -> None:
    stop = threading.Event()
    while not stop.wait(POLL_SECONDS):
        if os.getppid() != parent_pid:
            os._exit(1)  # no cleanup: the parent that would collect results is gone
