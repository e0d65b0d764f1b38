"""Shared test fixtures: one real Ray cluster (num_cpus=2) and one Prefect test harness per session,
and the path to the read-only real data in ../shared/data."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

for _key, _value in {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "RAY_AUTH_MODE": "disabled",
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ.setdefault(_key, _value)

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.exists():
        pytest.fail(f"real data not found at {SHARED_DATA} (the repo expects ../shared/data beside it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster shared by the session; yields its GCS address."""
    import ray

    from tasks.ray_stage import configure_data_context

    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    configure_data_context()
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def prefect_harness():
    """A real Prefect API (temporary database) for the session; yields its URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness():
        yield PREFECT_API_URL.value()
