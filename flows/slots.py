"""Slots of the shared global concurrency limits, held under a lease, waited for out loud.

A batch holds its share of a limit with Prefect's lease-based ``concurrency(...)``: the lease is
renewed while the batch runs and lapses ``LEASE_S`` after its holder dies. A real Prefect
server's repossessor then frees the slots. A temporary API runs no repossessor, so a run that
owns one does its pass itself (:func:`reclaim_lapsed_slots`): at flow start and whenever it
waits. Waiting is logged every ``WAIT_STEP_S`` with what is waited for.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterator

from filelock import FileLock
from prefect.concurrency._asyncio import AcquireConcurrencySlotTimeoutError
from prefect.concurrency.sync import concurrency
from prefect.utilities.asyncutils import run_coro_as_sync

from flows.api import owns_temporary_api

# The shortest lease Prefect's API accepts: a killed run's slots return a minute later.
LEASE_S = 60
WAIT_STEP_S = 15     # how often a wait is logged (and, on a temporary API, slots reclaimed)
POLL_S = 2.0

log = logging.getLogger(__name__)
_reclaiming = threading.Lock()


@contextlib.contextmanager
def hold_slots(name: str, slots: int, logger: logging.Logger | logging.LoggerAdapter = log
               ) -> Iterator[None]:
    """Hold ``slots`` of the limit ``name`` for the block, under a renewed lease.

    Free room is polled first, so a wait is ours to log (Prefect's own acquisition retries
    silently); the acquisition itself still times out and loops, for a race lost to
    another run. ``slots <= 0`` holds nothing (and asks the API nothing).
    """
    if slots <= 0:
        yield
        return
    started = last_said = time.monotonic()
    with contextlib.ExitStack() as stack:
        while True:
            room = _room(name)
            if room is None or room >= slots:
                try:
                    stack.enter_context(concurrency(name, occupy=slots, lease_duration=LEASE_S,
                                                    timeout_seconds=WAIT_STEP_S))
                    break
                except AcquireConcurrencySlotTimeoutError:
                    pass
            else:
                time.sleep(POLL_S)
            if time.monotonic() - last_said >= WAIT_STEP_S:
                last_said = time.monotonic()
                logger.warning("waiting %.0fs for %d slot(s) of the concurrency limit %r (%s); "
                               "slots of a killed run come back when its %ds lease lapses",
                               last_said - started, slots, name, _occupancy(name), LEASE_S)
                if owns_temporary_api():
                    try:
                        reclaim_lapsed_slots([name], logger)
                    except Exception as err:  # noqa: BLE001 - retried at the next step
                        logger.warning("could not reclaim slots of %r: %s", name, err)
        yield


def _read(name: str):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name)


def _room(name: str) -> int | None:
    """Free slots of the limit; None when unknown (no such limit: concurrency() skips it)."""
    try:
        limit = _read(name)
    except Exception:  # noqa: BLE001 - let concurrency() decide and say
        return None
    return limit.limit - limit.active_slots


def _occupancy(name: str) -> str:
    try:
        limit = _read(name)
    except Exception as err:  # noqa: BLE001 - the log line must not fail the wait
        return f"occupancy unknown: {type(err).__name__}"
    return f"{limit.active_slots} of {limit.limit} in use"


def reclaim_lapsed_slots(names: list[str],
                         logger: logging.Logger | logging.LoggerAdapter = log) -> int:
    """The repossessor's pass for a temporary API (leases in files under PREFECT_HOME): revoke
    lapsed leases, then free the slots no live lease accounts for (a dead run's). Returns how
    many slots came back."""
    from prefect.server.concurrency.lease_storage.filesystem import ConcurrencyLeaseStorage

    storage = ConcurrencyLeaseStorage()
    storage.storage_path.mkdir(parents=True, exist_ok=True)
    # One reclaimer at a time (threads here, other runs on this PREFECT_HOME), so a lost slot
    # is given back once.
    with _reclaiming, FileLock(storage.storage_path / ".reclaim.lock"):
        return _reclaim(storage, names, logger)


def _reclaim(storage, names: list[str], logger) -> int:
    from prefect.client.orchestration import get_client

    async def live_leases() -> list:
        for lease_id in await storage.read_expired_lease_ids(limit=1000):
            await storage.revoke_lease(lease_id)
        leases = []
        for lease_id in await storage.read_active_lease_ids(limit=1000):
            if (lease := await storage.read_lease(lease_id)) is not None:
                leases.append(lease)
        return leases

    freed = 0
    with get_client(sync_client=True) as client:
        # Read the counts before the leases: a slot taken in between is then never counted
        # as unaccounted for.
        limits = {n: client.read_global_concurrency_limit_by_name(n) for n in names}
        leases = run_coro_as_sync(live_leases())
        for name, limit in limits.items():
            held = sum(lease.metadata.slots for lease in leases
                       if lease.metadata and limit.id in lease.resource_ids)
            lost = limit.active_slots - held
            if lost > 0:
                client.release_concurrency_slots(names=[name], slots=lost,
                                                 occupancy_seconds=LEASE_S)
                logger.warning("reclaimed %d slot(s) of %r that no live lease holds (a run "
                               "that was killed)", lost, name)
                freed += lost
    return freed
