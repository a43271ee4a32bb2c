"""Shared fixtures.

`custom_components.sonoff_ota` must be imported before the `hass` fixture runs:
phcc's testing_config has its own `custom_components` package that would
otherwise shadow ours ("Integration not found").
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Generator
from pathlib import Path

from homeassistant.core import HomeAssistant
import pytest

import custom_components.sonoff_ota  # noqa: F401  (must come first, see above)
from tests.harness import setup_real_mqtt
from virtual_sonoff.mosquitto import MosquittoBroker


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
async def real_mqtt(hass: HomeAssistant, mock_hass_config: None, broker: MosquittoBroker) -> None:
    """HA's real MQTT integration connected to the real broker."""
    await setup_real_mqtt(hass, broker)
