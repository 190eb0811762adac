"""``python -m flows.watchdog PARENT CHILD``: stop CHILD when PARENT is gone.

The temporary Prefect API server is a child of the run; a run killed with SIGKILL cannot stop
it, so this small process, started next to it, polls its parent and stops the server (SIGTERM,
then SIGKILL) once the parent has died. It exits when the server does.
"""

from __future__ import annotations

import os
import signal
import sys
import time
from pathlib import Path

POLL_S = 0.5
GRACE_S = 5.0


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = Path(f"/proc/{pid}/stat")
    try:
        return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True  # no /proc (macOS): kill(0) said it exists


def stop(pid: int) -> None:
    for sig, wait in ((signal.SIGTERM, GRACE_S), (signal.SIGKILL, GRACE_S)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if not alive(pid):
            return


def watch(parent: int, child: int) -> None:
    # Our parent dies -> we are re-parented: getppid() changes even if the pid is reused.
    while alive(child):
        if os.getppid() != parent or not alive(parent):
            stop(child)
            return
        time.sleep(POLL_S)


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C to the group is the parent's job
    watch(int(sys.argv[1]), int(sys.argv[2]))
