"""The host's Wi-Fi during a setup-mode flash: ITEAD, home, FinalStage, home.

`SetupModeWifi` drives a `host_wifi_hop.WifiHop` at the points the flash needs it and reports
every hop as the `wifi_hop` detail of the flash's tracker. Facts:
shared/spec/host-wifi-hopping.md (hops, safety), setup-mode-ota.md §5 (ITEAD AP) and §7
(FinalStage at 192.168.4.2, re-created at each E2A boot).

The ITEAD SSID carries the deviceid, which is unknown before the host is on that AP, so the
setup AP is found by a scan for `ITEAD-1000…` (`host_wifi_targets.ITEAD_SSID_RE`); more than
one such AP in range is refused (`several_setup_aps`) rather than guessing which device to
flash, and the SSIDs seen are kept (`setup_aps_found`) so the flow can offer them as a list.
A hop pinned to one SSID (`setup_ssid`, one device of that list) joins exactly that AP.
No Home Assistant imports.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Final

from .flash_stages import FlashTracker, Stage
from .host_wifi_hop import DEFAULT_SCAN_INTERVAL, WifiHop
from .host_wifi_targets import (
    FINALSTAGE_SSID,
    ITEAD_SSID_RE,
    finalstage_target,
    setup_ap_target,
    tasmota_ap_target,
)
from .host_wifi_types import (
    DEFAULT_JOIN_TIMEOUT,
    HopError,
    HopErrorCode,
    HopTarget,
    LinkEvent,
    RestoreResult,
)
from .setup_mode_errors import SetupModeError, StageTimeoutError

_LOGGER = logging.getLogger(__name__)

FINALSTAGE_SSID_RE: Final = re.compile(rf"^{FINALSTAGE_SSID}$")
DETAIL: Final = "wifi_hop"
"""English summary of the hop (logs, diagnostics); the UI renders the parts below."""
DETAIL_STATE: Final = "wifi_hop_state"
"""looking | joining | on | gone | home | not_restored (translated by the UI)."""
DETAIL_SSID: Final = "wifi_hop_ssid"
DETAIL_INTERFACE: Final = "wifi_hop_interface"
DETAIL_ADDRESS: Final = "wifi_hop_address"
DETAIL_ERROR: Final = "wifi_hop_error"
"""The tracker detail (and flow placeholder) that says what the hop is doing."""


def hop_error(err: HopError, ssid: str, interface: str | None) -> SetupModeError:
    """A `HopError` as a flash error whose code is the flow's abort reason `wifi_<code>`."""
    return SetupModeError(
        f"wifi_{err.code.value}", ssid=ssid, interface=interface or "?", detail=str(err)
    )


class SetupModeWifi:
    """Move the host's Wi-Fi for one setup-mode flash (see the module docstring)."""

    def __init__(
        self,
        hop: WifiHop,
        tracker: FlashTracker,
        *,
        join_timeout: float = DEFAULT_JOIN_TIMEOUT,
        scan_interval: float = DEFAULT_SCAN_INTERVAL,
        setup_ssid: str | None = None,
    ) -> None:
        """Wrap `hop`; nothing changes before the first `join_*` call.

        `setup_ssid` pins the setup AP to one `ITEAD-…` SSID (one of several in range);
        None finds the only one in range.
        """
        self.hop = hop
        self.setup_ssid = setup_ssid
        self.setup_aps_found: tuple[str, ...] = ()
        """The `ITEAD-…` SSIDs in range when more than one was seen (the refusal's list)."""
        self.tracker = tracker
        self._join_timeout = join_timeout
        self._scan_interval = scan_interval
        self._on: str | None = None
        """The SSID the hop has put the host on (kept while FinalStage flaps)."""
        self._lock = asyncio.Lock()
        hop.set_link_callback(self._on_link)

    def __repr__(self) -> str:
        return f"SetupModeWifi(hop={self.hop!r}, on={self._on!r})"

    @property
    def interface(self) -> str | None:
        """The Wi-Fi interface the hop moves (known after `prepare()`)."""
        return self.hop.plan.interface if self.hop.plan else None

    @property
    def on(self) -> str | None:
        """The SSID the host was moved to, None while on the home network."""
        return self._on

    def _detail(
        self, state: str, text: str, *, ssid: str = "", address: str = "", error: str = ""
    ) -> None:
        self.tracker.update(
            None,
            **{
                DETAIL: text,
                DETAIL_STATE: state,
                DETAIL_SSID: ssid,
                DETAIL_INTERFACE: self.interface or "Wi-Fi",
                DETAIL_ADDRESS: address,
                DETAIL_ERROR: error,
            },
        )

    def _on_link(self, event: LinkEvent) -> None:
        if self._on != event.ssid:
            return
        address = str(event.address or "")
        if event.up:
            self._detail("on", f"on {event.ssid} as {address}", ssid=event.ssid, address=address)
        else:  # FinalStage reboots between its two sessions (setup-mode-ota.md §7)
            self._detail(
                "gone", f"{event.ssid} is gone for now; re-joining when it is back", ssid=event.ssid
            )

    async def _find(self, pattern: re.Pattern[str], label: str, limit: float, stage: Stage) -> str:
        self._detail("looking", f"looking for {label} on {self.interface or 'Wi-Fi'}", ssid=label)
        try:
            found = await self.hop.find_ssids(pattern, limit, scan_interval=self._scan_interval)
        except TimeoutError as err:
            raise StageTimeoutError(stage) from err
        except HopError as err:
            raise hop_error(err, label, self.interface) from err
        if len(found) > 1:
            if pattern is ITEAD_SSID_RE:
                self.setup_aps_found = tuple(found)
            raise hop_error(
                HopError(HopErrorCode.SEVERAL_SETUP_APS, ", ".join(found)),
                ", ".join(found),
                self.interface,
            )
        return found[0]

    async def _join(self, target: HopTarget) -> None:
        self._detail(
            "joining", f"joining {target.ssid} on {self.interface or 'Wi-Fi'}", ssid=target.ssid
        )
        try:
            joined = await self.hop.join(target)
        except HopError as err:
            self._on = None
            raise hop_error(err, target.ssid, self.interface) from err
        self._on = target.ssid
        address = str(joined.address)
        self._detail("on", f"on {joined.ssid} as {address}", ssid=joined.ssid, address=address)

    async def join_setup_ap(self, timeout: float) -> None:  # noqa: ASYNC109
        """Find the device's `ITEAD-…` AP (or `setup_ssid`) within `timeout`; join as 10.10.7.2."""
        if self._on is not None and ITEAD_SSID_RE.match(self._on):
            return
        if self.setup_ssid is not None:
            pinned = re.compile(rf"^{re.escape(self.setup_ssid)}$")
            ssid = await self._find(pinned, self.setup_ssid, timeout, Stage.WAIT_SETUP_AP)
        else:
            ssid = await self._find(ITEAD_SSID_RE, "ITEAD-…", timeout, Stage.WAIT_SETUP_AP)
        await self._join(setup_ap_target(ssid, timeout=self._join_timeout))

    async def join_finalstage(self, timeout: float) -> None:  # noqa: ASYNC109
        """Wait (within `timeout`) for the FinalStage AP, join it as 192.168.4.2, stay on it."""
        if self._on == FINALSTAGE_SSID:
            return  # joined, or the hop re-joins by itself while it flaps
        await self._find(FINALSTAGE_SSID_RE, FINALSTAGE_SSID, timeout, Stage.WAIT_FINALSTAGE)
        await self._join(finalstage_target(timeout=self._join_timeout))

    async def join_tasmota_ap(self, pattern: re.Pattern[str], timeout: float) -> str:  # noqa: ASYNC109
        """Find Tasmota's first-boot AP (`pattern`) within `timeout` and join it; its SSID.

        Raises `StageTimeoutError`/`SetupModeError` like the other hops; the hand-off
        then falls back to the phone link.
        """
        ssid = await self._find(pattern, "tasmota_…", timeout, Stage.TASMOTA_AP)
        await self._join(tasmota_ap_target(ssid, timeout=self._join_timeout))
        return ssid

    async def go_home(self) -> RestoreResult:
        """Back to the network the host was on before (restore); never raises."""
        return await self.restore()

    async def restore(self) -> RestoreResult:
        """Restore the original network; idempotent, runs to its end even when cancelled."""
        async with self._lock:
            was_on, self._on = self._on, None
            result = await self.hop.restore_shielded()
        if was_on is not None or result.method != "nothing":
            if result.restored:
                self._detail("home", "back on the home network")
            else:
                self._detail(
                    "not_restored",
                    f"could not restore the home network: {result.detail}",
                    error=str(result.detail),
                )
                _LOGGER.warning("Host network not restored: %s", result.detail)
        return result
