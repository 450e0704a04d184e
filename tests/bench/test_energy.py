"""Energy is reported in labelled units: CodeCarbon's kWh and the same amount in joules (1 kWh = 3.6e6 J)."""

from __future__ import annotations

import sys
import types

import pytest

from qwave.bench.energy import EnergyMeter
from qwave.errors import ConfigError


class FakeTracker:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs

    def start(self) -> None:
        pass

    def stop(self) -> float:
        self.final_emissions_data = types.SimpleNamespace(energy_consumed=0.002)
        return 0.0007


def test_kwh_are_converted_to_joules(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", types.SimpleNamespace(OfflineEmissionsTracker=FakeTracker))
    with EnergyMeter(True) as meter:
        pass
    assert meter.result() == {"energy_kwh": 0.002, "energy_j": 7200.0, "co2_kg": 0.0007}


def test_disabled_meter_reports_nothing():
    with EnergyMeter(False) as meter:
        pass
    assert meter.result() is None


def test_missing_codecarbon_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "codecarbon", None)
    with pytest.raises(ConfigError, match=r"pip install 'qwave\[energy\]'"):
        EnergyMeter(True)
