"""A real local Ray cluster for the Ray executor tests, started once per test session.

Two CPUs, the size of the CI box; see ``benchmark_api.ray_head`` for how it stays private.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from benchmark_api.ray_head import local_ray_head

RAY_CPUS = 2


@pytest.fixture(scope="session")
def ray_address() -> Iterator[str]:
    """The address ("127.0.0.1:PORT") of a running local Ray head with RAY_CPUS CPUs."""
    with local_ray_head(RAY_CPUS) as address:
        yield address
