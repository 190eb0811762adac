"""Run identifiers: sortable by time, unique across machines."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime


def new_run_id() -> str:
    """``20261123T120501Z-1a2b3c4d``: sorts by start time; the suffix keeps parallel runs apart."""
    return f"{datetime.now(UTC):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def flow_run_id() -> str | None:
    """The Prefect flow run this code runs in (a flow, one of its tasks, or a process it
    launched with ``PREFECT__FLOW_RUN_ID``); None outside Prefect."""
    from prefect.runtime import flow_run

    return flow_run.get_id()


def run_id_of_flow_run() -> str:
    """The lake's run id of this run: the flow run's name where Prefect named it with
    :func:`new_run_id` (the nightly flow does), so one run has one name in both places."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return context.flow_run.name if context is not None else new_run_id()


def in_deployment() -> bool:
    """This code runs in a flow run a deployment started (on a worker, in its scratch folder)."""
    from prefect.runtime import deployment

    return deployment.get_id() is not None
