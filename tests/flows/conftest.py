"""One Prefect test harness (a temporary API server) for the whole session: it takes ~20 s."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def prefect_api() -> str:
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()
