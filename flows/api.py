"""The temporary Prefect API of a run that has no ``PREFECT_API_URL``: owned, watched, stopped.

Prefect starts a temporary API server on first use and stops it at interpreter exit, which a
SIGTERM'd, SIGKILL'd or wedged run never reaches: its server lived on (~230 MB each). Here the
run starts that same server itself (Prefect's process-wide ``SubprocessASGIServer``, so every
Prefect call in the process uses it), with two changes:
- its concurrency leases are kept in files under ``PREFECT_HOME`` (Prefect's filesystem lease
  storage) instead of the server's memory, so the next run can see which slots a dead run held
  (:mod:`flows.slots` reclaims them, since a temporary server runs no lease repossessor);
- a watchdog process (:mod:`flows.watchdog`) stops it when the run dies, even by SIGKILL.
SIGTERM and SIGINT raise in the main thread, so the run unwinds and stops its server; if it
has not exited ``HARD_STOP_S`` later (a worker thread stuck in a call or a wait holds it up),
or at a second signal, the server is stopped and the process exits there and then: calls in
flight are abandoned, and nothing is half-written (every lake write is one atomic commit,
every finished call is in the cache).
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator

from prefect.exceptions import TerminationSignal

LEASE_STORAGE_ENV = "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE"
FILE_LEASES = "prefect.server.concurrency.lease_storage.filesystem"
HARD_STOP_S = 3.0
# Prefect waits 20 s by default; a first start on a new PREFECT_HOME (database migrations) on
# a busy 2-core machine takes longer.
MIN_STARTUP_S = 120

log = logging.getLogger(__name__)
_owned = None   # the SubprocessASGIServer this process started, while it runs
_watchdog: subprocess.Popen | None = None
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def configured_api() -> str | None:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or None


def owns_temporary_api() -> bool:
    """True while this process runs its own temporary API (so it may reclaim lapsed slots)."""
    return _owned is not None and configured_api() in (None, _owned.api_url)


@contextlib.contextmanager
def named_in_settings(api_url: str | None) -> Iterator[None]:
    """Name the temporary API in the run's settings, which Prefect sends along with each task:
    a task run by another process (a Dask worker) then reports to it, instead of starting a
    temporary API of its own where no limit of this run exists."""
    if api_url is None:
        yield
        return
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: api_url}):
        yield


@contextlib.contextmanager
def temporary_api() -> Iterator[str | None]:
    """Start, watch and finally stop the temporary API when no API is configured; yields its
    URL (None when a configured API is used)."""
    global _owned, _watchdog
    if configured_api() is not None or _owned is not None:
        yield None
        return
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS as STARTUP

    server = SubprocessASGIServer()
    if server.running:  # Prefect started it already, with leases in memory: not ours to run
        yield None
        return
    saved = os.environ.get(LEASE_STORAGE_ENV)
    os.environ[LEASE_STORAGE_ENV] = FILE_LEASES   # the server reads it from its environment
    try:
        server.start(timeout=max(STARTUP.value(), MIN_STARTUP_S))
    finally:
        _restore(LEASE_STORAGE_ENV, saved)
    _watchdog = subprocess.Popen(
        [sys.executable, "-m", "flows.watchdog", str(os.getpid()),
         str(server.server_process.pid)], stdin=subprocess.DEVNULL)
    _owned = server
    log.debug("temporary Prefect API %s (pid %d, watchdog %d)", server.api_url,
              server.server_process.pid, _watchdog.pid)
    try:
        yield server.api_url
        _drain_to_api()
    finally:
        _stop_owned()


def _drain_to_api() -> None:
    """Send the logs and events still queued while the server is up (Prefect would do it at
    exit, after the server is gone, and print an error)."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=5)


def _stop_owned() -> None:
    global _owned, _watchdog
    server, watchdog, _owned, _watchdog = _owned, _watchdog, None, None
    if server is not None:
        server.stop()
    if watchdog is not None:
        watchdog.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            watchdog.wait(timeout=5)


@contextlib.contextmanager
def signals_stop_the_run() -> Iterator[None]:
    """SIGTERM and SIGINT stop the run: they raise ``TerminationSignal`` in the main thread
    (Prefect's own bridge does the same inside a flow run), and a watcher thread, woken by
    Python's signal wakeup fd even while the main thread is blocked in a wait that Python
    handlers cannot interrupt, exits the process ``HARD_STOP_S`` later, or at once on a second
    signal."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, _frame) -> None:
        raise TerminationSignal(signal=signum)

    previous = {sig: signal.signal(sig, stop) for sig in SIGNALS}
    reader, writer = socket.socketpair()
    writer.setblocking(False)
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    threading.Thread(target=_watch, args=(reader,), daemon=True,
                     name="longreward-signal-watch").start()
    try:
        yield
    finally:
        signal.set_wakeup_fd(old_fd)
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        writer.close()   # the watcher reads EOF and ends


def _watch(reader: socket.socket) -> None:
    first = None
    with reader:
        while data := reader.recv(64):
            for signum in (s for s in data if s in SIGNALS):
                if first is not None:
                    _exit_now(signum)
                first = signum
                timer = threading.Timer(HARD_STOP_S, _exit_now, args=(signum,))
                timer.daemon = True
                timer.start()


def _exit_now(signum: int) -> None:
    with contextlib.suppress(Exception):
        _stop_owned()
    sys.stderr.write(f"stopped by {signal.Signals(signum).name}: calls in flight abandoned; "
                     "rerun to finish (no finished call is paid twice)\n")
    sys.stderr.flush()
    os._exit(128 + signum)


def _restore(name: str, value: str | None) -> None:
    if value is None:
        os.environ.pop(name, None)
    else:
        os.environ[name] = value
