"""Repair issues: conditions the user must fix outside the flow.

- `mqtt_missing` (created and worded by `tasmota_link`): no usable MQTT entry,
  so a flashed Tasmota device cannot be handed to HA's Tasmota integration.
  Checked at setup and on every change of an MQTT entry: withdrawn as soon as
  one is loaded, raised again if it goes.
- `port_in_use`: a port a flash needs (8080 for FinalStage and the plain
  download listener; the TLS port for the fake cloud) is held by another
  program. Raised when a port check or a listener fails (a bind can fail after
  the check passed: another program took the port in between), withdrawn when a
  later check finds the port free or a listener binds it. The issue is fixable:
  its repair flow checks again.
- `interrupted_<flash id>`: Home Assistant restarted (or stopped) during a flash;
  raised at the next start from the flash journal, one per interrupted flash.
  Its translation key says where the device was left (`RestartState`); the
  repair flow finishes the flash (the intermediate image waits on FinalStage,
  or Tasmota waits for its settings), or explains how to start over.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
import enum
from typing import TYPE_CHECKING, Final

from homeassistant.config_entries import (
    SIGNAL_CONFIG_ENTRY_CHANGED,
    ConfigEntry,
    ConfigEntryChange,
)
from homeassistant.core import HomeAssistant, callback
from homeassistant.helpers import issue_registry as ir
from homeassistant.helpers.dispatcher import async_dispatcher_connect

from .const import DOMAIN
from .proto.flash_stages import FlashPath, Stage
from .tasmota_link import MQTT_DOMAIN, async_update_mqtt_issue

if TYPE_CHECKING:
    from .flash_journal import JournalRecord

ISSUE_PORT_IN_USE: Final = "port_in_use"
ISSUE_RESTART_PREFIX: Final = "interrupted_"


class RestartState(enum.StrEnum):
    """Where an interrupted flash left its device (the issue's translation key)."""

    SETUP_AP = "restart_setup_ap"
    """Before POST /ap: the device still runs eWeLink and has none of our settings."""
    DISPATCH = "restart_dispatch"
    """/ap (maybe) sent: the device joins the home Wi-Fi and calls HA, still eWeLink."""
    SESSION = "restart_session"
    """Dispatched, nothing downloaded: eWeLink, unchanged."""
    DOWNLOAD = "restart_download"
    """The intermediate download started, not finished: the old slot still boots."""
    FINALSTAGE = "restart_finalstage"
    """The intermediate image is on the device and polls FinalStage: resumed."""
    HANDOFF = "restart_handoff"
    """Tasmota was served whole: only its Wi-Fi and MQTT settings are missing."""
    DIY_DOWNLOAD = "restart_diy_download"
    """DIY: ota_flash was running; the device keeps eWeLink or reports an error."""
    DIY_BACK = "restart_diy_back"
    """DIY: the device is back on `_ewelink._tcp` with its old version: flash again."""


RESUMABLE: Final = frozenset({RestartState.FINALSTAGE, RestartState.HANDOFF})


def restart_state(record: JournalRecord) -> RestartState | None:
    """Where `record`'s device is; None when the flash touched nothing (no issue)."""
    if record.final_served:
        return RestartState.HANDOFF
    if record.path is FlashPath.DIY:
        if record.stage in (Stage.FLASHING, Stage.WAIT_REBOOT) or record.served:
            return RestartState.DIY_BACK if record.seen_back else RestartState.DIY_DOWNLOAD
        return None  # checked or unlocked only: nothing to tell
    if record.intermediate_served or record.stage in (Stage.WAIT_FINALSTAGE, Stage.FINALSTAGE):
        return RestartState.FINALSTAGE
    if record.stage in (Stage.PREPARING, Stage.WAIT_SETUP_AP):
        return RestartState.SETUP_AP
    if record.stage in (Stage.PROVISIONING, Stage.WAIT_DISPATCH):
        return RestartState.DISPATCH
    if record.stage is Stage.UPGRADING and record.served:
        return RestartState.DOWNLOAD
    return RestartState.SESSION


def restart_issue_id(flash_id: str) -> str:
    """The issue id of one interrupted flash."""
    return f"{ISSUE_RESTART_PREFIX}{flash_id}"


@callback
def async_create_restart_issue(
    hass: HomeAssistant, record: JournalRecord, state: RestartState
) -> None:
    """Raise (or re-word) the issue of an interrupted flash."""
    ir.async_create_issue(
        hass,
        DOMAIN,
        restart_issue_id(record.flash_id),
        is_fixable=state is not RestartState.DIY_DOWNLOAD,
        is_persistent=False,
        severity=ir.IssueSeverity.ERROR if state in RESUMABLE else ir.IssueSeverity.WARNING,
        translation_key=str(state),
        translation_placeholders={
            # Before GET /device only its access point's name is known.
            "deviceid": record.deviceid or "ITEAD-…",
            "fw_version": record.fw_version or "?",
            "stage": str(record.stage),
        },
        data={"flash_id": record.flash_id, "state": str(state)},
    )


@callback
def async_delete_restart_issue(hass: HomeAssistant, flash_id: str) -> None:
    """Withdraw the issue of an interrupted flash (finished or started over)."""
    ir.async_delete_issue(hass, DOMAIN, restart_issue_id(flash_id))


@callback
def async_check_mqtt(hass: HomeAssistant) -> bool:
    """Raise or withdraw `mqtt_missing`; True when MQTT is usable (an entry is loaded)."""
    return async_update_mqtt_issue(hass) is None


@callback
def async_track_mqtt(hass: HomeAssistant) -> Callable[[], None]:
    """Check now and whenever an MQTT entry changes (added, removed, loaded, unloaded)."""
    async_check_mqtt(hass)

    @callback
    def _changed(change: ConfigEntryChange, entry: ConfigEntry) -> None:
        if entry.domain == MQTT_DOMAIN:
            async_check_mqtt(hass)

    return async_dispatcher_connect(hass, SIGNAL_CONFIG_ENTRY_CHANGED, _changed)


@callback
def async_update_port_issue(hass: HomeAssistant, busy: Iterable[str]) -> None:
    """Raise `port_in_use` for the `host:port` strings in `busy`, or withdraw it if none."""
    ports = sorted(set(busy))
    if not ports:
        ir.async_delete_issue(hass, DOMAIN, ISSUE_PORT_IN_USE)
        return
    ir.async_create_issue(
        hass,
        DOMAIN,
        ISSUE_PORT_IN_USE,
        is_fixable=True,
        severity=ir.IssueSeverity.ERROR,
        translation_key=ISSUE_PORT_IN_USE,
        translation_placeholders={"ports": ", ".join(ports)},
        data={"ports": ",".join(ports)},
    )


def _issue_ports(hass: HomeAssistant) -> list[str]:
    """The `host:port` strings the `port_in_use` issue names now (none if no issue)."""
    issue = ir.async_get(hass).async_get_issue(DOMAIN, ISSUE_PORT_IN_USE)
    if issue is None or not issue.data:
        return []
    return [port for port in str(issue.data.get("ports") or "").split(",") if port]


@callback
def async_port_busy(hass: HomeAssistant, port: str) -> None:
    """A bind of `host:port` failed: add it to `port_in_use` (raise the issue if needed)."""
    async_update_port_issue(hass, [*_issue_ports(hass), port])


@callback
def async_port_bound(hass: HomeAssistant, port: str) -> None:
    """A listener bound `host:port`: take it out of `port_in_use` (withdrawn when empty)."""
    ports = _issue_ports(hass)
    if port in ports:
        async_update_port_issue(hass, [p for p in ports if p != port])
