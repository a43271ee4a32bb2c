"""The secret scan of tests/conftest.py fails a test when a secret shows up.

Each test makes a secret reach one of the scanned places (a log record at
DEBUG, a flow result, a diagnostics download with redaction switched off),
checks that the autouse scan saw it and that `fail_on_hits` fails the test,
then clears the scan so that the test itself passes.
"""

from __future__ import annotations

import logging
from typing import Any

from homeassistant.core import HomeAssistant
import pytest
from pytest_homeassistant_custom_component.common import MockConfigEntry
from pytest_homeassistant_custom_component.components.diagnostics import (
    get_diagnostics_for_config_entry,
)
from pytest_homeassistant_custom_component.typing import ClientSessionGenerator

from custom_components.sonoff_ota import diagnostics
from custom_components.sonoff_ota.const import DOMAIN
from tests.conftest import fail_on_hits
from tests.harness import WIFI
from tests.secret_scan import SecretScan
from virtual_sonoff.setup_mode import SetupModeConfig

PASSWORD = WIFI["wifi_password"]


def expect_failure(scan: SecretScan, count: int = 1) -> None:
    """The scan has `count` hits and fails the test; then forget them."""
    assert len(scan.hits()) == count, scan.hits()
    with pytest.raises(pytest.fail.Exception, match="secret leaked"):
        fail_on_hits(scan)
    scan.texts.clear()
    fail_on_hits(scan)  # nothing left


def test_a_debug_log_with_the_wifi_password_fails(secret_scan: SecretScan) -> None:
    logging.getLogger("custom_components.sonoff_ota.probe").debug("joining with %s", PASSWORD)
    (hit,) = secret_scan.hits()
    assert hit.where == "log custom_components.sonoff_ota.probe DEBUG"
    assert PASSWORD not in hit.describe()
    expect_failure(secret_scan)


def test_a_traceback_quoting_a_secret_fails(secret_scan: SecretScan) -> None:
    def connect() -> None:
        raise ValueError(f"bad password {PASSWORD}")

    try:
        connect()
    except ValueError:
        logging.getLogger("homeassistant.core").exception("boom")
    expect_failure(secret_scan)


def test_a_device_simulator_may_log_its_own_secrets(secret_scan: SecretScan) -> None:
    logging.getLogger("virtual_sonoff.setup_mode").warning("my password is %s", PASSWORD)
    assert not secret_scan.hits()


def test_minted_apikeys_are_secrets(secret_scan: SecretScan) -> None:
    """The virtual Sonoff's apikey and the fake cloud's keys are random: they are recorded."""
    device_key = SetupModeConfig().apikey
    assert device_key in secret_scan.secrets
    logging.getLogger("custom_components.sonoff_ota").info("apikey %s", device_key)
    expect_failure(secret_scan)


def test_flow_results_are_scanned_as_the_frontend_sees_them(secret_scan: SecretScan) -> None:
    link = f"http://192.168.4.1/cm?cmnd=Backlog%20Password1%20{PASSWORD}"
    # The documented exception: the one-tap link of the Tasmota AP step.
    for action in ("tasmota_ap", "tasmota_ap_wifi_hop"):
        secret_scan.check_flow_result(
            {
                "type": "progress",
                "handler": DOMAIN,
                "step_id": "flash",
                "progress_action": action,
                "description_placeholders": {"phone_link": link, "ssid": "HomeNet"},
            }
        )
    # HA keeps a created entry's data to itself (the frontend gets neither data nor result).
    secret_scan.check_flow_result(
        {"type": "create_entry", "handler": DOMAIN, "data": dict(WIFI), "result": object()}
    )
    assert not secret_scan.hits()
    # The same link in any other step, or a password in an abort's text, is a leak.
    secret_scan.check_flow_result(
        {
            "type": "progress",
            "handler": DOMAIN,
            "step_id": "flash",
            "progress_action": "wait_discovery",
            "description_placeholders": {"phone_link": link},
        }
    )
    secret_scan.check_flow_result(
        {"type": "abort", "handler": DOMAIN, "reason": "x", "description_placeholders": {"d": link}}
    )
    expect_failure(secret_scan, count=2)


async def test_a_flow_result_of_a_real_flow_is_scanned(
    hass: HomeAssistant, secret_scan: SecretScan
) -> None:
    """A form that echoed the password as a suggested value would be caught."""
    result: Any = await hass.config_entries.flow.async_init(DOMAIN, context={"source": "user"})
    assert result["type"] == "abort"  # no MQTT here: the flow stops at once
    assert not secret_scan.hits()
    secret_scan.add(result["reason"])  # pretend its reason were a secret
    expect_failure(secret_scan)


async def test_diagnostics_without_redaction_fail(
    hass: HomeAssistant,
    hass_client: ClientSessionGenerator,
    secret_scan: SecretScan,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Break the redaction: the download, fetched as the UI does, carries the password."""
    monkeypatch.setattr(diagnostics, "_redact", lambda data, _secrets: data)
    entry = MockConfigEntry(domain=DOMAIN, data=dict(WIFI), unique_id=DOMAIN)
    entry.add_to_hass(hass)
    assert await hass.config_entries.async_setup(entry.entry_id)
    await hass.async_block_till_done()
    data: Any = await get_diagnostics_for_config_entry(hass, hass_client, entry)
    assert data["entry"]["wifi_password"] == PASSWORD
    assert any(hit.where.startswith("diagnostics") for hit in secret_scan.hits())
    secret_scan.texts.clear()
