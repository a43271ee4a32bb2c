"""A port taken between the flow's check and the listener's bind (a race).

The flow checks 8080 and 8443 (here: free loopback ports standing for them)
before anything irreversible; another program can still take one a moment
later. The race is made deterministic by taking the port right after the
check returns (a wrapper around `SetupModeRun.check_ports`); the port is held by
a real listening socket and the bind fails for real. Nothing is mocked but
MQTT (a mock integration: the flash stops long before the hand-off) and the
device, which is a dead loopback port (nothing may go to 10.10.7.1).
"""

from __future__ import annotations

from collections.abc import Iterator
import socket
from typing import Any

from homeassistant import config_entries
from homeassistant.components.repairs import DOMAIN as REPAIRS_DOMAIN
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.helpers import issue_registry as ir
from homeassistant.setup import async_setup_component
import pytest

from custom_components.sonoff_ota.const import DOMAIN
from custom_components.sonoff_ota.flash_server import SERVER_KEY
from custom_components.sonoff_ota.issues import ISSUE_PORT_IN_USE, async_update_port_issue
from custom_components.sonoff_ota.listeners import PortInUseError, PrivateListener
from custom_components.sonoff_ota.setup_mode_run import SetupModeRun
from tests.dashboard_device import mock_mqtt, setup_entry
from tests.harness import LOOPBACK, free_port, install_settings, local_firmware
from tests.leak_check import snapshot


def port_issue(hass: HomeAssistant) -> ir.IssueEntry | None:
    return ir.async_get(hass).async_get_issue(DOMAIN, ISSUE_PORT_IN_USE)


def can_connect(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1):
            return True
    except OSError:
        return False


def hold(port: int) -> socket.socket:
    """Another program takes `port` (a real listening socket)."""
    holder = socket.socket()
    holder.bind((LOOPBACK, port))
    holder.listen()
    return holder


@pytest.fixture
def holders() -> Iterator[list[socket.socket]]:
    taken: list[socket.socket] = []
    yield taken
    for holder in taken:
        holder.close()


@pytest.mark.parametrize("taken", ["finalstage", "tls"])
async def test_port_taken_after_the_check_gives_the_same_error_and_repair(
    hass: HomeAssistant,
    socket_enabled: None,
    monkeypatch: pytest.MonkeyPatch,
    holders: list[socket.socket],
    taken: str,
) -> None:
    async with local_firmware() as firmware:
        settings = install_settings(
            hass,
            firmware,
            tls_port=free_port(),
            setup_ap_url=f"http://{LOOPBACK}:{free_port()}",
        )
        port = settings.finalstage_port if taken == "finalstage" else settings.tls_port
        other = settings.tls_port if taken == "finalstage" else settings.finalstage_port
        real_check = SetupModeRun.check_ports

        async def check_then_lose_the_race(run: SetupModeRun) -> list[str]:
            busy = await real_check(run)
            holders.append(hold(port))  # another program, right after the check
            return busy

        monkeypatch.setattr(SetupModeRun, "check_ports", check_then_lose_the_race)
        assert await async_setup_component(hass, "http", {})
        await mock_mqtt(hass)
        await setup_entry(hass)
        before = await snapshot(hass)

        result: Any = await hass.config_entries.flow.async_init(
            DOMAIN, context={"source": config_entries.SOURCE_USER}
        )
        flow_id = result["flow_id"]
        result = await hass.config_entries.flow.async_configure(
            flow_id, {"next_step_id": "setup_mode"}
        )
        result = await hass.config_entries.flow.async_configure(
            flow_id, {"callback_host": LOOPBACK}
        )
        assert result["type"] is FlowResultType.SHOW_PROGRESS  # the check passed
        await hass.async_block_till_done(wait_background_tasks=True)
        result = await hass.config_entries.flow.async_configure(flow_id)
        # The same words as the early check's form error, and the same repair issue.
        assert result["type"] is FlowResultType.ABORT, result
        assert result["reason"] == "port_in_use"
        assert result["description_placeholders"] == {"ports": f"{LOOPBACK}:{port}"}
        raised = port_issue(hass)
        assert raised is not None
        assert raised.is_fixable
        assert raised.translation_placeholders == {"ports": f"{LOOPBACK}:{port}"}

        # Whatever was opened before the failed bind is closed again.
        server = hass.data[SERVER_KEY]
        assert server._tls.listener is None and server._tls.count == 0
        assert server._plain.listener is None and server._plain.count == 0
        assert not can_connect(other)
        assert (await snapshot(hass)).ours_vs(before, others=[(LOOPBACK, port)]) == {}

        # The repair flow: still held, then freed.
        assert await async_setup_component(hass, REPAIRS_DOMAIN, {})
        await hass.async_block_till_done()
        manager = hass.data[REPAIRS_DOMAIN]["flow_manager"]
        fix: Any = await manager.async_init(DOMAIN, data={"issue_id": ISSUE_PORT_IN_USE})
        fix = await manager.async_configure(fix["flow_id"], {})
        assert fix["errors"] == {"base": "still_in_use"}
        holders.pop().close()
        fix = await manager.async_configure(fix["flow_id"], {})
        assert fix["type"] is FlowResultType.CREATE_ENTRY
        assert port_issue(hass) is None


async def test_listener_bind_failure_raises_the_issue_and_a_later_bind_withdraws_it(
    hass: HomeAssistant, socket_enabled: None, holders: list[socket.socket]
) -> None:
    """The listener itself (both paths use it): nothing stays bound after a failure."""
    port, other = free_port(), free_port()
    async_update_port_issue(hass, [f"{LOOPBACK}:{other}"])  # an older finding stays listed
    holders.append(hold(port))
    listener = PrivateListener(hass, "probe", [], LOOPBACK, port)
    with pytest.raises(PortInUseError) as caught:
        await listener.start()
    assert (caught.value.host, caught.value.port) == (LOOPBACK, port)
    assert not listener.running
    raised = port_issue(hass)
    assert raised is not None
    assert raised.translation_placeholders == {
        "ports": ", ".join(sorted([f"{LOOPBACK}:{port}", f"{LOOPBACK}:{other}"]))
    }

    holders.pop().close()
    await listener.start()
    try:
        assert listener.running
        raised = port_issue(hass)
        assert raised is not None
        assert raised.translation_placeholders == {"ports": f"{LOOPBACK}:{other}"}
    finally:
        await listener.stop()
    assert not can_connect(port)
