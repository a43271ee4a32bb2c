"""How a flash that reached Tasmota ends in the flow: which device, the upgrade, where it is.

The hand-off (`HandoffRun`) finds the flashed device on MQTT and waits for its
HA device. When several new Tasmota devices appear at once and no MAC tells
which one is ours, `pick_device` asks; `finish` then says where the device is
and offers "Upgrade to full Tasmota now" (`upgrade`, on by default, with the
build and its size). With it on, `upgrade` shows the lite → full upgrade
(`tasmota_upgrade_run.async_run_upgrade`, the same code as the "Tasmota
firmware" entity's Install) stage by stage until the device's discovery
announces the new version (`upgrade_done`); a failure shows its message with
Retry / Skip (`upgrade_failed`), and a retry after a timeout first waits until
the device is back on MQTT or the cooldown passed (`upgrade_wait`). Every way
ends as before: on the first run the entry that keeps the home Wi-Fi is created.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from homeassistant.config_entries import ConfigFlowResult
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers.selector import (
    BooleanSelector,
    SelectOptionDict,
    SelectSelector,
    SelectSelectorConfig,
    SelectSelectorMode,
)
from homeassistant.helpers.translation import async_get_translations
import voluptuous as vol

from .const import CONF_SSID, CONF_WIFI_PASSWORD, DOMAIN
from .flash_flow import FlashFlow
from .known_devices import async_remember_run
from .settings import get_settings

if TYPE_CHECKING:
    from .proto.tasmota_releases import TargetBuild
    from .proto.tasmota_upgrade import UpgradeResult, UpgradeTarget
    from .proto.tasmota_upgrade_stages import UpgradeTracker

_LOGGER = logging.getLogger(__name__)

CONF_TASMOTA_MAC = "tasmota_mac"
CONF_UPGRADE = "upgrade"
CONF_ACTION = "action"
ACTION_RETRY = "retry"
ACTION_SKIP = "skip"


class UpgradeState:
    """The flow's lite → full upgrade (the upgrade itself is `async_run_upgrade`)."""

    __slots__ = (
        "build",
        "error",
        "remove_listener",
        "result",
        "task",
        "texts",
        "tracker",
        "wait_task",
    )

    def __init__(self) -> None:
        """No upgrade yet."""
        self.build: TargetBuild | None = None
        self.tracker: UpgradeTracker | None = None
        self.task: asyncio.Task[None] | None = None
        """The progress task; it waits (shielded) for the upgrade, which outlives the flow."""
        self.wait_task: asyncio.Task[None] | None = None
        self.result: UpgradeResult | None = None
        self.error: tuple[str, dict[str, str]] | None = None
        self.remove_listener: Any = None
        self.texts: dict[str, str] = {}


class HandoffFlow(FlashFlow):
    """The steps after the flash: pick the device among several, finish, the upgrade."""

    def __init__(self) -> None:
        """No upgrade yet."""
        super().__init__()
        self._upgrade = UpgradeState()

    async def async_step_pick_device(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Several new Tasmota devices appeared at once and no MAC tells which is ours."""
        from .handoff_run import HandoffLinkError  # noqa: PLC0415 - loaded: the flash ran

        flash = self._flash
        by_mac = {device.mac: device for device in flash.candidates}
        errors: dict[str, str] = {}
        if user_input is not None and flash.handoff is not None and self._run is not None:
            device = by_mac[user_input[CONF_TASMOTA_MAC]]
            try:
                flash.outcome = await flash.handoff.adopt(device, model_known=False)
            except HandoffLinkError as err:
                self._fail(self._run.tracker, err.code, err.placeholders)
                return await self.async_step_failed()
            return await self.async_step_finish()
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_TASMOTA_MAC): SelectSelector(
                    SelectSelectorConfig(
                        options=[
                            SelectOptionDict(
                                value=mac, label=f"{dev.device_name or mac} ({dev.ip}, {mac})"
                            )
                            for mac, dev in by_mac.items()
                        ],
                        mode=SelectSelectorMode.LIST,
                    )
                )
            }
        )
        return self.async_show_form(step_id="pick_device", data_schema=schema, errors=errors)

    async def async_step_finish(self, user_input: dict[str, Any] | None = None) -> ConfigFlowResult:
        """The device took Tasmota: say where it is, offer the upgrade, end on "Submit".

        A form first (not the final result at once): the frontend may fetch this step
        more than once right after the progress ends, and a flow that had already
        ended would answer the later fetch with "Invalid flow specified".
        """
        if (instead := await self._async_flashed()) is not None:
            return instead  # one of several devices: the next one, or the summary
        from .tasmota_upgrade_run import chosen_build  # noqa: PLC0415 - loaded with the flash stack

        run, flash = self._run, self._flash
        assert run is not None and self._wifi is not None
        async with flash.finishing:  # a second fetch at once waits here (see FlashState)
            if not flash.finished:
                outcome = flash.outcome
                deviceid = run.tracker.details.get("deviceid", "")
                build = chosen_build(self.hass, self._first_entry())
                self._upgrade.build = build
                run.tracker.done()
                async_remember_run(
                    self.hass, run, flashed=True, mac=outcome.mac if outcome else None
                )
                await self._async_close()
                flash.finish_placeholders = {
                    "deviceid": deviceid,
                    "device_name": outcome.name if outcome else deviceid,
                    "device_path": f"/config/devices/device/{outcome.device_id}" if outcome else "",
                    "build": build.label,
                    "size": await self._async_size_text(build),
                }
                flash.finished = True
        placeholders = flash.finish_placeholders
        # The frontend's list of flows in progress formats this step's title (and text)
        # with the context's title placeholders: give it the same values.
        self.context["title_placeholders"] = {
            "name": placeholders["device_name"],  # flow_title, unless discovery named it
            **self.context.get("title_placeholders", {}),
            **placeholders,
        }
        target = self._upgrade_target()
        if user_input is None:
            fields: dict[Any, Any] = {}
            if target is not None:
                fields[vol.Required(CONF_UPGRADE, default=True)] = BooleanSelector()
            schema: Any = vol.Schema(fields)
            return self.async_show_form(
                step_id="finish",
                data_schema=schema,
                description_placeholders=placeholders,
                last_step=True,
            )
        if target is not None and user_input.get(CONF_UPGRADE, True):
            return await self.async_step_upgrade()
        return await self._async_end(upgraded=False)

    async def _async_end(self, *, upgraded: bool) -> ConfigFlowResult:
        """Close the flow as without the upgrade: the entry on the first run, else a note."""
        assert self._wifi is not None
        placeholders = dict(self._flash.finish_placeholders)
        if upgraded and self._upgrade.result is not None:
            placeholders["version"] = self._upgrade.result.after.label
        if self._async_current_entries(include_ignore=False):
            return self.async_abort(
                reason="flash_and_upgrade_successful" if upgraded else "flash_successful",
                description_placeholders=placeholders,
            )
        await self.async_set_unique_id(DOMAIN)
        return self.async_create_entry(
            title="Sonoff OTA",
            data={CONF_SSID: self._wifi.ssid, CONF_WIFI_PASSWORD: self._wifi.password},
            description="upgraded" if upgraded else None,
            description_placeholders=placeholders,
        )

    # -- the upgrade to full Tasmota ----------------------------------------------------------

    def _first_entry(self) -> Any:
        """The entry whose options choose the build (None on the first run: the default)."""
        entries = self._async_current_entries(include_ignore=False)
        return entries[0] if entries else None

    def _upgrade_target(self) -> UpgradeTarget | None:
        from .proto.tasmota_upgrade import UpgradeTarget  # noqa: PLC0415 - loaded with the flash stack

        handoff = self._flash.handoff
        if handoff is None or handoff.result is None:
            return None
        return UpgradeTarget.from_handoff(handoff.result)

    async def _async_size_text(self, build: TargetBuild) -> str:
        """`612 kB` from a HEAD request, or "size not known" (in HA's language)."""
        from .tasmota_upgrade_run import async_image_size  # noqa: PLC0415 - loaded with the flash stack

        size = await async_image_size(self.hass, build.ota_url)
        texts = self._upgrade.texts
        if not texts:
            texts.update(
                await async_get_translations(
                    self.hass, self.hass.config.language, "selector", {DOMAIN}
                )
            )
        key = f"component.{DOMAIN}.selector.upgrade_size.options."
        if size is None:
            return texts.get(key + "unknown", "size not known")
        template = texts.get(key + "known", "{size} kB")
        return template.replace("{size}", f"{size / 1000:.0f}")

    def _upgrade_placeholders(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        finish = self._flash.finish_placeholders
        tracker = self._upgrade.tracker
        build = self._upgrade.build
        url = build.ota_url if build is not None else ""
        return {
            "device_name": finish.get("device_name", ""),
            "device": finish.get("device_name", ""),
            "device_path": finish.get("device_path", ""),
            "build": finish.get("build", ""),
            "host": url.split("/")[2] if url.count("/") >= 2 else url,
            "percentage": str(tracker.percentage if tracker is not None else 0),
            "version": (tracker.details.get("running") if tracker is not None else None) or "?",
            "minutes": str(max(1, round(get_settings(self.hass).timeouts.tasmota_upgrade / 60))),
            **(extra or {}),
        }

    def _upgrade_action(self) -> str:
        """The progress text's key: `upgrade_<stage>` (an end keeps the last stage's text)."""
        from .proto.tasmota_upgrade_stages import UpgradeStage  # noqa: PLC0415 - loaded with the flash stack

        tracker = self._upgrade.tracker
        if tracker is None:
            return f"upgrade_{UpgradeStage.REQUESTED}"
        stage = tracker.stage
        if stage is UpgradeStage.DONE:
            stage = UpgradeStage.CONFIRMING
        elif stage is UpgradeStage.FAILED:
            stage = next(
                (h.stage for h in reversed(tracker.history) if h.stage is not UpgradeStage.FAILED),
                UpgradeStage.REQUESTED,
            )
        return f"upgrade_{stage}"

    def _on_upgrade_change(self, tracker: UpgradeTracker) -> None:
        if tracker.finished:
            self._ring.stop()
            return
        if self._upgrade.task is None:
            return
        self._show_progress_change(self._upgrade_action(), self._upgrade_placeholders())

    async def async_step_upgrade(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """The upgrade, stage by stage, until the device announces the new version."""
        from .proto.tasmota_upgrade_stages import UpgradeTracker  # noqa: PLC0415 - loaded with the flash stack

        state = self._upgrade
        target = self._upgrade_target()
        assert target is not None and state.build is not None
        if state.task is None:
            state.result, state.error = None, None
            state.tracker = UpgradeTracker(device_label=target.mac)
            state.remove_listener = state.tracker.add_listener(self._on_upgrade_change)
            upgrade = self.hass.async_create_background_task(
                self._async_upgrade(target, state.build, state.tracker), f"{DOMAIN} upgrade"
            )
            state.task = self.hass.async_create_task(
                _async_wait_shielded(upgrade), f"{DOMAIN} upgrade progress", eager_start=False
            )
        if not state.task.done():
            placeholders = self._upgrade_placeholders()
            self._ring.fetched(int(placeholders["percentage"]))
            return self.async_show_progress(
                step_id="upgrade",
                progress_action=self._upgrade_action(),
                description_placeholders=placeholders,
                progress_task=state.task,
            )
        state.task = None
        self._ring.stop()
        self._drop_upgrade_listener()
        if state.result is not None:
            return self.async_show_progress_done(next_step_id="upgrade_done")
        return self.async_show_progress_done(next_step_id="upgrade_failed")

    async def _async_upgrade(
        self, target: UpgradeTarget, build: TargetBuild, tracker: UpgradeTracker
    ) -> None:
        """Run the shared upgrade; keep its result or its error for the next step."""
        from .proto.tasmota_upgrade_stages import UpgradeError, UpgradeErrorCode  # noqa: PLC0415 - loaded with the flash stack
        from .tasmota_upgrade_run import (  # noqa: PLC0415
            UpgradeBusyError,
            UpgradeSettlingError,
            async_run_upgrade,
        )

        state = self._upgrade
        try:
            state.result = await async_run_upgrade(self.hass, target, build, tracker=tracker)
        except UpgradeError as err:
            state.error = (f"upgrade_{err.code}", dict(err.placeholders))
        except UpgradeBusyError:
            state.error = ("upgrade_busy", {})
        except UpgradeSettlingError as err:
            state.error = ("upgrade_settling", {"minutes": str(err.minutes)})
        except HomeAssistantError as err:  # MQTT itself failed
            _LOGGER.warning("Upgrade of %s: MQTT failed: %s", target.mac, err)
            tracker.fail(UpgradeError(UpgradeErrorCode.NO_ANSWER, str(err), command="MQTT"))
            state.error = ("upgrade_no_answer", {"command": "MQTT"})
        except Exception:
            _LOGGER.exception("Unexpected error during the upgrade of %s", target.mac)
            tracker.fail(UpgradeError(UpgradeErrorCode.NO_ANSWER, "unexpected", command="?"))
            state.error = ("upgrade_unknown", {})

    async def async_step_upgrade_done(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Back on MQTT with the new version: say so, then end the flow on "Submit"."""
        result = self._upgrade.result
        assert result is not None
        placeholders = {**self._flash.finish_placeholders, "version": result.after.label}
        if user_input is None:
            return self.async_show_form(
                step_id="upgrade_done", description_placeholders=placeholders, last_step=True
            )
        return await self._async_end(upgraded=True)

    async def async_step_upgrade_failed(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Why the upgrade stopped, with Retry / Skip (skip ends the flow as without it)."""
        from .tasmota_upgrade_run import device_upgrades  # noqa: PLC0415 - loaded with the flash stack

        code, details = self._upgrade.error or ("upgrade_unknown", {})
        target = self._upgrade_target()
        if user_input is not None:
            if user_input.get(CONF_ACTION) == ACTION_RETRY and target is not None:
                if device_upgrades(self.hass, target.mac).settling:
                    return await self.async_step_upgrade_wait()
                return await self.async_step_upgrade()
            return await self._async_end(upgraded=False)
        schema: Any = vol.Schema(
            {
                vol.Required(CONF_ACTION, default=ACTION_RETRY): SelectSelector(
                    SelectSelectorConfig(
                        options=[ACTION_RETRY, ACTION_SKIP],
                        mode=SelectSelectorMode.LIST,
                        translation_key="upgrade_action",
                    )
                )
            }
        )
        settling = target is not None and device_upgrades(self.hass, target.mac).settling
        extra = {"cooldown": self._cooldown_minutes(), **details}
        return self.async_show_form(
            step_id="upgrade_failed",
            data_schema=schema,
            errors={"base": "upgrade_timeout_settling" if settling else code},
            description_placeholders=self._upgrade_placeholders(extra),
        )

    def _cooldown_minutes(self) -> str:
        from .tasmota_upgrade_run import device_upgrades  # noqa: PLC0415 - loaded with the flash stack

        target = self._upgrade_target()
        if target is not None and (state := device_upgrades(self.hass, target.mac)).settling:
            return str(state.minutes_left)
        cooldown = get_settings(self.hass).timeouts.tasmota_upgrade_cooldown
        return str(max(1, round(cooldown / 60)))

    async def async_step_upgrade_wait(
        self, user_input: dict[str, Any] | None = None
    ) -> ConfigFlowResult:
        """Retry after a timeout: first wait until the device is back on MQTT (or the cooldown)."""
        from .tasmota_upgrade_run import async_wait_until_settled  # noqa: PLC0415 - loaded with the flash stack

        state = self._upgrade
        target = self._upgrade_target()
        assert target is not None
        if state.wait_task is None:
            state.wait_task = self.hass.async_create_task(
                async_wait_until_settled(self.hass, target.mac),
                f"{DOMAIN} upgrade wait",
                eager_start=False,
            )
        if not state.wait_task.done():
            return self.async_show_progress(
                step_id="upgrade_wait",
                progress_action="upgrade_wait",
                description_placeholders=self._upgrade_placeholders(
                    {"cooldown": self._cooldown_minutes()}
                ),
                progress_task=state.wait_task,
            )
        state.wait_task = None
        return self.async_show_progress_done(next_step_id="upgrade")

    def _drop_upgrade_listener(self) -> None:
        state = self._upgrade
        if state.remove_listener is not None:
            state.remove_listener()
            state.remove_listener = None

    def async_remove(self) -> None:
        """The flow is gone: stop showing the upgrade (a running one goes on to its end)."""
        self._drop_upgrade_listener()
        super().async_remove()


async def _async_wait_shielded(upgrade: asyncio.Task[None]) -> None:
    """Wait for `upgrade`; cancelling this (the flow closed) leaves the upgrade running.

    Tasmota's OTA cannot be stopped over MQTT: the upgrade follows the device to its
    end, so that the one-at-a-time and no-retry-while-downloading rules keep holding.
    """
    await asyncio.shield(upgrade)
