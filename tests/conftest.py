"""Shared fixtures.

`custom_components.sonoff_ota` must be imported before the `hass` fixture runs:
phcc's testing_config has its own `custom_components` package that would
otherwise shadow ours ("Integration not found").

Every test is scanned for leaked secrets (`secret_scan`, autouse; see
tests/secret_scan.py): HA's log records, our diagnostics and every flow result.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
import functools
import logging
from pathlib import Path
from typing import Any

from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowManager
import pytest

import custom_components.sonoff_ota  # noqa: F401  (must come first, see above)
from custom_components.sonoff_ota import diagnostics as our_diagnostics
from custom_components.sonoff_ota.proto import fake_cloud
from tests.harness import setup_real_mqtt, stop_tasmota_then_drain
from tests.secret_scan import RecordingUuid, ScanHandler, SecretScan
from virtual_sonoff import setup_mode as virtual_setup_mode
from virtual_sonoff.mosquitto import MosquittoBroker

OUR_LOGGER = "custom_components.sonoff_ota"


def fail_on_hits(scan: SecretScan) -> None:
    """Fail (pytest.fail) when `scan` found a secret; say where, not what."""
    hits = scan.hits()
    if hits:
        pytest.fail(
            "secret leaked:\n" + "\n".join(sorted({hit.describe() for hit in hits})),
            pytrace=False,
        )


@pytest.fixture(autouse=True)
def secret_scan(monkeypatch: pytest.MonkeyPatch) -> Generator[SecretScan]:
    """Fail the test if a secret reached a log record, a diagnostics dump or a flow result.

    Our own loggers run at DEBUG meanwhile (a debug log is what users post). A test
    that logs a secret on purpose reads `secret_scan.hits()` and clears `texts`.
    """
    scan = SecretScan()
    handler = ScanHandler(scan)
    root = logging.getLogger()
    ours = logging.getLogger(OUR_LOGGER)
    old_level = ours.level
    root.addHandler(handler)
    ours.setLevel(logging.DEBUG)

    recording = RecordingUuid(scan)
    monkeypatch.setattr(virtual_setup_mode, "uuid", recording)
    monkeypatch.setattr(fake_cloud, "uuid", recording)

    real_step = FlowManager._async_handle_step

    @functools.wraps(real_step)
    async def scanned_step(self: FlowManager, *args: Any, **kwargs: Any) -> Any:
        result = await real_step(self, *args, **kwargs)
        scan.check_flow_result(result)
        return result

    monkeypatch.setattr(FlowManager, "_async_handle_step", scanned_step)

    for name in ("async_get_config_entry_diagnostics", "async_get_device_diagnostics"):
        real = getattr(our_diagnostics, name)

        @functools.wraps(real)
        async def scanned(*args: Any, _real: Any = real, _name: str = name) -> Any:
            data = await _real(*args)
            scan.check_object(f"diagnostics {_name}", data)
            return data

        monkeypatch.setattr(our_diagnostics, name, scanned)
    try:
        yield scan
    finally:
        root.removeHandler(handler)
        ours.setLevel(old_level)
    fail_on_hits(scan)


@pytest.fixture(autouse=True)
def auto_enable_custom_integrations(
    enable_custom_integrations: None,
) -> Generator[None]:
    """Let HA load the integration from custom_components/."""
    yield


@pytest.fixture(autouse=True)
def private_config_dir(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """Give each test's HA a config directory of its own.

    phcc's default is one shared folder inside the installed package: the firmware
    cache (config/sonoff_ota/firmware) would leak from one test into the next, and
    a "cold cache" test would quietly find a warm one.
    """
    if "hass" not in request.fixturenames:
        return
    hass: HomeAssistant = request.getfixturevalue("hass")
    config_dir = tmp_path / "ha-config"
    config_dir.mkdir()
    hass.config.config_dir = str(config_dir)


@pytest.fixture(autouse=True)
def no_release_lookup_on_the_internet(monkeypatch: pytest.MonkeyPatch) -> None:
    """The newest-Tasmota-release lookup defaults to GitHub: off unless a test serves one."""
    from custom_components.sonoff_ota.proto import tasmota_releases

    monkeypatch.setattr(tasmota_releases, "DEFAULT_RELEASES_URL", "")


@pytest.fixture
async def broker(socket_enabled: None, tmp_path: Path) -> AsyncGenerator[MosquittoBroker]:
    """A real Mosquitto (Debian package) on a free 127.0.0.1 port, stopped at the end."""
    async with MosquittoBroker(tmp_path / "mosquitto") as running:
        yield running


@pytest.fixture
async def real_mqtt(
    hass: HomeAssistant, mock_hass_config: None, broker: MosquittoBroker
) -> AsyncGenerator[None]:
    """HA's real MQTT integration connected to the real broker.

    At the end, while MQTT is still up: HA's tasmota entries are unloaded and hatasmota's
    pending debounced publishes go out (a virtual Tasmota leaving at the end of a test
    makes the broker publish its LWT, and HA's tasmota then queries its status 1 s later,
    by then without MQTT).
    """
    await setup_real_mqtt(hass, broker)
    yield
    await stop_tasmota_then_drain(hass)
