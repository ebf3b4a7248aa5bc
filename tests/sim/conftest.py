"""Small simulated nights shared by the simulator tests (session-scoped: each is built once)."""

from __future__ import annotations

import pytest
from sim_configs import MULTI, SMALL

from skyblink.sim import NightSummary, simulate_night


@pytest.fixture(scope="session")
def small_night(tmp_path_factory: pytest.TempPathFactory) -> NightSummary:
    """2 fields x 3 exposures of one 256x256 uint16 CCD, rendered by a process pool."""
    return simulate_night(tmp_path_factory.mktemp("small"), SMALL, max_workers=2)


@pytest.fixture(scope="session")
def small_night_again(tmp_path_factory: pytest.TempPathFactory) -> NightSummary:
    """The same night rendered serially in this process."""
    return simulate_night(tmp_path_factory.mktemp("again"), SMALL, max_workers=1)


@pytest.fixture(scope="session")
def other_seed_night(tmp_path_factory: pytest.TempPathFactory) -> NightSummary:
    """The same configuration with another seed."""
    config = SMALL.model_copy(update={"seed": SMALL.seed + 1})
    return simulate_night(tmp_path_factory.mktemp("other"), config, max_workers=1)


@pytest.fixture(scope="session")
def multi_ccd_night(tmp_path_factory: pytest.TempPathFactory) -> NightSummary:
    """1 field x 3 exposures of 4 CCDs of 128x128 float32."""
    return simulate_night(tmp_path_factory.mktemp("multi"), MULTI, max_workers=1)
