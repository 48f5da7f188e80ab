"""``deblur`` commands run as worker processes: command lines, thread limits, logs, locks.

Each worker is ``python -m deblurcli`` of the same interpreter and checkout, limited to a
few threads so several share a small CPU. A command's results are read from the files it
writes (``RUN/result.json``, ``deblur eval --report DIR``'s ``summary.json``), never parsed
out of what it prints: the output only goes to the log.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shlex
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# The checkout (or site-packages) this package was imported from: workers import the same.
PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent
_THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "OPENCV_FOR_THREADS_NUM",  # OpenCV's own pool (the on-the-fly blur) ignores the others
)


def deblur_cmd(*args: str) -> list[str]:
    """``deblur ARGS`` through the interpreter running this process (same environment)."""
    return [sys.executable, "-m", "deblurcli", *args]


def shown(cmd: list[str]) -> str:
    """A command as a user would type it: ``deblur ...``, paths under the checkout relative."""
    if cmd[:3] == [sys.executable, "-m", "deblurcli"]:
        cmd = ["deblur", *cmd[3:]]
    prefix = f"{PACKAGE_ROOT}{os.sep}"
    return shlex.join(a[len(prefix) :] if a.startswith(prefix) else a for a in cmd)


def config_args(config: dict[str, Any], flag: str = "--config") -> list[str]:
    """``--config KEY=JSON`` options of an arch config (or of another ``flag``)."""
    out: list[str] = []
    for key, value in config.items():
        out += [flag, f"{key}={json.dumps(value, separators=(',', ':'))}"]
    return out


def thread_env(threads: int) -> dict[str, str]:
    """The environment of a worker process limited to ``threads`` threads."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env.update({var: str(threads) for var in _THREAD_VARS})
    return env


def run_logged(
    cmd: list[str], log: Path, threads: int, keep: tuple[int, ...] = ()
) -> subprocess.CompletedProcess:
    """Run ``cmd`` with ``threads`` threads, appending the command and its output to ``log``.

    ``keep``: file descriptors the command inherits (a lock it should hold while it runs).
    """
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f:
        f.write(f"\n$ {shown(cmd)}\n")
        f.flush()
        return subprocess.run(
            cmd,
            stdout=f,
            stderr=subprocess.STDOUT,
            env=thread_env(threads),
            pass_fds=keep,
            check=False,
        )


def failure(what: str, proc: subprocess.CompletedProcess, log: Path) -> RuntimeError:
    """The error of a failed command, quoting its last log line."""
    lines = [ln for ln in log.read_text(encoding="utf-8").splitlines() if ln.strip()]
    last = lines[-1] if lines else ""
    return RuntimeError(f"{what} failed (exit {proc.returncode}): {last} (log: {log})")


def read_result(path: Path, what: str) -> dict[str, Any]:
    """The JSON object a command wrote to ``path``; a missing or broken file names ``what``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RuntimeError(f"{what} left no readable result at {path} ({exc})") from None
    if not isinstance(data, dict):
        raise RuntimeError(f"{what}: {path} does not hold a JSON object")
    return data


@contextlib.contextmanager
def run_lock(run: Path) -> Iterator[int]:
    """Hold ``RUN/.train.lock``; yields its fd for the trainer to inherit.

    Passed to ``deblur train``, the lock lives as long as the trainer, so a trainer left
    running by a killed driver also keeps a second driver off its run folder.
    """
    run.mkdir(parents=True, exist_ok=True)
    with open(run / ".train.lock", "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RuntimeError(f"{run} is being trained by another process") from None
        yield f.fileno()
