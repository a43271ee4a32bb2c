"""Fixtures of the fuzz tests: the running integration as a device sees it (`fuzz_target`)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from homeassistant.core import HomeAssistant
from homeassistant.setup import async_setup_component
import pytest
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota.flash_server import async_get_flash_server
from custom_components.sonoff_ota.settings import SETTINGS_KEY, Settings
from tests.fuzz.driver import LOOPBACK
from tests.fuzz.surfaces import Target, running_target


@pytest.fixture
async def fuzz_target(
    hass: HomeAssistant, hass_client_no_auth: ClientSessionGenerator, socket_enabled: None
) -> AsyncIterator[Target]:
    """HA's HTTP server (phcc's TestServer on 127.0.0.1) with our views, and both listeners.

    One served set is live (mounted at `/ota/` too), one token is expired, a bystander set
    belongs to a device no input names, and the fake cloud expects `strategies.DEVICEID`.
    """
    hass.data[SETTINGS_KEY] = Settings(
        tls_bind=LOOPBACK, tls_port=0, finalstage_bind=LOOPBACK, finalstage_port=0
    )
    assert await async_setup_component(hass, "http", {})
    await async_get_flash_server(hass)  # views first: the TestServer freezes the router
    client = await hass_client_no_auth()
    async with running_target(hass, client.server.port) as target:
        yield target
