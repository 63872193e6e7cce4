"""The settlement settings: PORTAL_SETTLEMENT_DELAY_DAYS and PORTAL_PAYOUT_TIME (HH:MM UTC or
off), with a clear error for anything else."""

from __future__ import annotations

import pytest

from portal.config import ConfigError, load_config


def settings(**env: str):
    return load_config({"PORTAL_ENV": "test", **env})["SERVICE_SETTINGS"]


def test_defaults_and_values() -> None:
    default = settings()
    assert (default.settlement_delay_days, default.payout_time) == (2, (2, 0))
    chosen = settings(PORTAL_SETTLEMENT_DELAY_DAYS="0", PORTAL_PAYOUT_TIME="23:45")
    assert (chosen.settlement_delay_days, chosen.payout_time) == (0, (23, 45))
    assert settings(PORTAL_PAYOUT_TIME="off").payout_time is None


@pytest.mark.parametrize("value", ["24:00", "2", "02:60", "noon", "-1:00"])
def test_a_bad_payout_time_stops_start_up(value: str) -> None:
    with pytest.raises(ConfigError, match="PORTAL_PAYOUT_TIME"):
        settings(PORTAL_PAYOUT_TIME=value)
