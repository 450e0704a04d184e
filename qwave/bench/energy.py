"""Optional energy measurement with CodeCarbon, reported in labelled units (kWh and J)."""

from __future__ import annotations

from qwave.errors import ConfigError

JOULES_PER_KWH = 3.6e6


class EnergyMeter:
    """Context manager measuring the energy of the enclosed block when enabled (``energy=true``)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._tracker = None
        self._kwh: float | None = None
        self._kg_co2: float | None = None
        if enabled:
            try:
                from codecarbon import OfflineEmissionsTracker
            except ImportError:
                raise ConfigError("energy=true needs CodeCarbon; install it with: "
                                  "pip install 'qwave[energy]'") from None
            self._tracker = OfflineEmissionsTracker(country_iso_code="USA", save_to_file=False, log_level="error",
                                                    measure_power_secs=1)

    def __enter__(self) -> EnergyMeter:
        if self._tracker is not None:
            self._tracker.start()
        return self

    def __exit__(self, *exc) -> None:
        if self._tracker is not None:
            self._kg_co2 = self._tracker.stop()
            self._kwh = float(self._tracker.final_emissions_data.energy_consumed)

    def result(self) -> dict | None:
        """``{"energy_kwh", "energy_j", "co2_kg"}`` of the measured block, or None when disabled."""
        if self._kwh is None:
            return None
        return {"energy_kwh": self._kwh, "energy_j": self._kwh * JOULES_PER_KWH, "co2_kg": self._kg_co2}
