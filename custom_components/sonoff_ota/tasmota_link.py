"""The Home Assistant side of the Tasmota hand-off: MQTT, HA's `tasmota` entry, the device.

- which broker the flashed device is given (HA's MQTT entry, host translated for the LAN);
- whether MQTT is there at all (the flow stops early without it; a repair issue says why);
- the discovery source of `proto.tasmota_handoff`, backed by `mqtt.async_subscribe`;
- HA's `tasmota` config entry, created through its own flow when missing;
- waiting until HA's tasmota integration has registered the device.

Facts: shared/spec/home-assistant.md §3.1 (Tasmota entry, version drift of its user step),
§3.2 (MQTT entry data, `core-mosquitto`), §2.4 (`network.async_get_source_ip`);
diy-ota-and-tasmota.md §3.6 (broker gotchas), §5 item 12.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import enum
import logging
from typing import TYPE_CHECKING, Any, Final

from homeassistant.config_entries import SOURCE_MQTT, SOURCE_USER, ConfigEntry, ConfigEntryState
from homeassistant.core import CALLBACK_TYPE, Event, HomeAssistant, callback
from homeassistant.data_entry_flow import FlowResultType
from homeassistant.exceptions import HomeAssistantError
from homeassistant.helpers import device_registry as dr, issue_registry as ir

from .const import DOMAIN
from .proto.mac_address import ha_mac
from .settings import get_settings

if TYPE_CHECKING:
    from homeassistant.components.mqtt import ReceiveMessage

    from .proto.tasmota_handoff_types import DeviceMqttSettings
    from .proto.tasmota_mqtt_feed import DiscoveryFeed, Publish

_LOGGER = logging.getLogger(__name__)

MQTT_DOMAIN: Final = "mqtt"
TASMOTA_DOMAIN: Final = "tasmota"
ISSUE_MQTT_MISSING: Final = "mqtt_missing"
"""Issue id and translation key (`issues.mqtt_missing` in strings.json)."""
MQTT_DOCS_URL: Final = "https://www.home-assistant.io/integrations/mqtt/"
_MAX_TASMOTA_FLOW_STEPS = 3
SUBSCRIBE_WAIT: Final = 5.0
"""How long `async_discovery_feed` waits for the broker to acknowledge (seconds)."""


MQTT_SETUP_PATH: Final = "/config/integrations/integration/mqtt"
"""Where a user sets MQTT up (shown when it is missing)."""


class MqttUnavailableReason(enum.StrEnum):
    """Why the hand-off cannot run (usable as a config-flow abort reason)."""

    NOT_CONFIGURED = "mqtt_not_configured"
    DISABLED = "mqtt_disabled"
    NOT_LOADED = "mqtt_not_loaded"


class MqttUnavailableError(HomeAssistantError):
    """HA's MQTT integration is missing, disabled or not connected."""

    def __init__(self, reason: MqttUnavailableReason) -> None:
        """Keep the reason (a translation key)."""
        super().__init__(str(reason))
        self.reason = reason


class TasmotaEntryError(HomeAssistantError):
    """HA's tasmota flow did not create its entry (unexpected step or abort)."""


# ------------------------------------------------------------------------ MQTT


@callback
def mqtt_unavailable_reason(hass: HomeAssistant) -> MqttUnavailableReason | None:
    """None when an MQTT entry is loaded; else why not (cheap, no waiting)."""
    entries = hass.config_entries.async_entries(MQTT_DOMAIN, include_ignore=False)
    if not entries:
        return MqttUnavailableReason.NOT_CONFIGURED
    enabled = [entry for entry in entries if entry.disabled_by is None]
    if not enabled:
        return MqttUnavailableReason.DISABLED
    if not any(entry.state is ConfigEntryState.LOADED for entry in enabled):
        return MqttUnavailableReason.NOT_LOADED
    return None


async def async_mqtt_available(hass: HomeAssistant) -> bool:
    """True when MQTT is configured and its client is ready (waits for a starting client)."""
    reason = mqtt_unavailable_reason(hass)
    if reason is MqttUnavailableReason.NOT_LOADED:
        from homeassistant.components import mqtt  # noqa: PLC0415  (optional dependency)

        # Set up but maybe still starting: HA waits up to its availability timeout.
        return await mqtt.async_wait_for_mqtt_client(hass)
    return reason is None


@callback
def async_update_mqtt_issue(hass: HomeAssistant) -> MqttUnavailableReason | None:
    """Create the "MQTT missing" repair issue when MQTT is not usable, delete it otherwise."""
    reason = mqtt_unavailable_reason(hass)
    if reason is None:
        async_delete_mqtt_missing_issue(hass)
    else:
        async_create_mqtt_missing_issue(hass, reason)
    return reason


@callback
def async_create_mqtt_missing_issue(
    hass: HomeAssistant, reason: MqttUnavailableReason = MqttUnavailableReason.NOT_CONFIGURED
) -> None:
    """Repair issue `mqtt_missing` (placeholder `reason`: one of MqttUnavailableReason)."""
    ir.async_create_issue(
        hass,
        DOMAIN,
        ISSUE_MQTT_MISSING,
        is_fixable=False,
        severity=ir.IssueSeverity.WARNING,
        translation_key=ISSUE_MQTT_MISSING,
        translation_placeholders={"reason": str(reason)},
        learn_more_url=MQTT_DOCS_URL,
    )


@callback
def async_delete_mqtt_missing_issue(hass: HomeAssistant) -> None:
    """Remove the `mqtt_missing` issue (no-op when absent)."""
    ir.async_delete_issue(hass, DOMAIN, ISSUE_MQTT_MISSING)


def _mqtt_entry(hass: HomeAssistant) -> ConfigEntry:
    reason = mqtt_unavailable_reason(hass)
    if reason is not None:
        raise MqttUnavailableError(reason)
    entries = hass.config_entries.async_entries(
        MQTT_DOMAIN, include_ignore=False, include_disabled=False
    )
    return next(entry for entry in entries if entry.state is ConfigEntryState.LOADED)


async def async_device_mqtt_settings(
    hass: HomeAssistant, device_ip: str | None = None
) -> DeviceMqttSettings:
    """The broker as the flashed device must reach it, from HA's MQTT entry.

    `Settings.device_broker_host` wins when set. Otherwise HA-internal names
    (`core-mosquitto`, `localhost`, `*.local`...) become the HA host's LAN IP from
    `network.async_get_source_ip` (towards `device_ip` when known), spec §3.6.
    Raises MqttUnavailableError.
    """
    # Loaded: only a hand-off asks, and the flash stack it is part of imports both.
    from .proto.tasmota_handoff_types import DeviceMqttSettings  # noqa: PLC0415
    from .proto.tasmota_settings import DEFAULT_MQTT_PORT, device_broker_host  # noqa: PLC0415

    data = _mqtt_entry(hass).data
    broker = str(data.get("broker") or "")
    override = get_settings(hass).device_broker_host
    if override:
        host = override
    else:
        from homeassistant.components import network  # noqa: PLC0415

        if device_ip:
            lan_ip = await network.async_get_source_ip(hass, device_ip)
        else:
            lan_ip = await network.async_get_source_ip(hass)
        host = device_broker_host(broker, lan_ip)
    return DeviceMqttSettings(
        host=host,
        port=int(data.get("port") or DEFAULT_MQTT_PORT),
        user=str(data.get("username") or ""),
        password=str(data.get("password") or ""),
    )


@asynccontextmanager
async def async_discovery_feed(hass: HomeAssistant) -> AsyncIterator[DiscoveryFeed]:
    """A `DiscoveryFeed` fed by `mqtt.async_subscribe` on the hand-off's topics.

    Subscribe BEFORE the device can publish: the retained messages that arrive
    first mark the devices that already existed. Unsubscribes on exit.
    """
    from homeassistant.components import mqtt  # noqa: PLC0415

    # Loaded: a hand-off or an upgrade asks, and their stacks import it.
    from .proto.tasmota_mqtt_feed import SUBSCRIPTIONS, DiscoveryFeed  # noqa: PLC0415

    feed = DiscoveryFeed()

    @callback
    def forward(message: ReceiveMessage) -> None:
        payload = message.payload
        feed.push(
            message.topic,
            bytes(payload) if isinstance(payload, bytearray) else payload,
            retained=message.retain,
        )

    unsubscribes = []
    try:
        subscribed = asyncio.Event()
        pending = set(SUBSCRIPTIONS)

        def done_for(topic: str) -> CALLBACK_TYPE:
            @callback
            def on_done() -> None:
                pending.discard(topic)
                if not pending:
                    subscribed.set()

            return on_done

        can_wait = True
        for topic in SUBSCRIPTIONS:
            unsubscribes.append(await mqtt.async_subscribe(hass, topic, forward))
            cancel = _on_subscribe_done(hass, topic, done_for(topic))
            if cancel is None:
                can_wait = False
            else:
                unsubscribes.append(cancel)
        # The broker must have the subscription before the device can publish:
        # otherwise its first (live) discovery comes back as "retained" = pre-existing.
        # On 2025.4 there is no acknowledgement to wait for (HA subscribes within ~1 s).
        if can_wait:
            try:
                async with asyncio.timeout(SUBSCRIBE_WAIT):
                    await subscribed.wait()
            except TimeoutError:
                _LOGGER.debug("MQTT did not confirm the discovery subscription in time")
        yield feed
    finally:
        for unsubscribe in unsubscribes:
            unsubscribe()


def _on_subscribe_done(
    hass: HomeAssistant, topic: str, on_done: CALLBACK_TYPE
) -> CALLBACK_TYPE | None:
    """`mqtt.async_on_subscribe_done` where it exists (2026.x; not in 2025.4): None if not."""
    from homeassistant.components import mqtt  # noqa: PLC0415

    register = getattr(mqtt, "async_on_subscribe_done", None)
    if register is None:
        return None
    unsubscribe: CALLBACK_TYPE = register(hass, topic, 0, on_done)
    return unsubscribe


def mqtt_publisher(hass: HomeAssistant) -> Publish:
    """`publish(topic, payload)` through HA's MQTT (for the Tasmota upgrade)."""

    async def publish(topic: str, payload: str) -> None:
        from homeassistant.components import mqtt  # noqa: PLC0415

        await mqtt.async_publish(hass, topic, payload)

    return publish


# --------------------------------------------------------------- tasmota entry


async def async_ensure_tasmota_entry(hass: HomeAssistant) -> ConfigEntry:
    """HA's `tasmota` entry; created through its own user flow when missing.

    The user step leads to `confirm` (no fields) on 2025.4 and to `config`
    (`discovery_prefix`) on 2026.x: we answer whichever form is shown (spec §3.1).
    A "Discovered" tasmota flow that MQTT discovery may have started is aborted
    once the entry exists (it would only offer what we just created).
    """
    from .proto.tasmota_discovery import DEFAULT_DISCOVERY_PREFIX  # noqa: PLC0415 - loaded: a hand-off asks

    existing = hass.config_entries.async_entries(TASMOTA_DOMAIN)
    if existing:
        return existing[0]
    manager = hass.config_entries.flow
    result: Any = await manager.async_init(TASMOTA_DOMAIN, context={"source": SOURCE_USER})
    for _ in range(_MAX_TASMOTA_FLOW_STEPS):
        if result["type"] is not FlowResultType.FORM:
            break
        step = result["step_id"]
        if step == "confirm":
            user_input: dict[str, Any] = {}
        elif step == "config":
            user_input = {"discovery_prefix": DEFAULT_DISCOVERY_PREFIX}
        else:
            manager.async_abort(result["flow_id"])
            raise TasmotaEntryError(f"tasmota flow shows an unknown step {step!r}")
        result = await manager.async_configure(result["flow_id"], user_input)
    if result["type"] is FlowResultType.CREATE_ENTRY:
        entry: ConfigEntry = result["result"]
    else:
        # e.g. single_instance_allowed from a race: the entry exists after all.
        existing = hass.config_entries.async_entries(TASMOTA_DOMAIN)
        if not existing:
            raise TasmotaEntryError(f"tasmota flow ended with {result.get('reason')!r}")
        entry = existing[0]
    for flow in manager.async_progress_by_handler(TASMOTA_DOMAIN):
        if flow["context"].get("source") == SOURCE_MQTT:
            manager.async_abort(flow["flow_id"])
    return entry


# ------------------------------------------------------------------ HA device


async def async_wait_for_ha_device(hass: HomeAssistant, mac: str, within: float) -> str:
    """Wait until a device with `connections={("mac", mac)}` is registered; its device id.

    Event-driven (device registry updates). Raises TimeoutError after `within` s.
    """
    registry = dr.async_get(hass)
    connections = {(dr.CONNECTION_NETWORK_MAC, ha_mac(mac))}
    changed = asyncio.Event()
    # 2026.x deprecates async_get_device (connections are no longer unique across
    # entries) in favour of async_get_devices, which 2025.4 does not have.
    get_devices = getattr(registry, "async_get_devices", None)

    def find() -> dr.DeviceEntry | None:
        if get_devices is None:
            return registry.async_get_device(connections=connections)
        devices: list[dr.DeviceEntry] = get_devices(connections=connections)
        tasmota = {entry.entry_id for entry in hass.config_entries.async_entries(TASMOTA_DOMAIN)}
        # Where async_get_devices exists, a device has one entry (`config_entry_id`);
        # `config_entries` is deprecated there.
        owned = [device for device in devices if _entry_id(device) in tasmota]
        candidates = owned or devices
        return candidates[0] if candidates else None

    @callback
    def on_update(_event: Event[Any]) -> None:
        changed.set()

    unsubscribe = hass.bus.async_listen(dr.EVENT_DEVICE_REGISTRY_UPDATED, on_update)
    try:
        async with asyncio.timeout(within):
            while True:
                changed.clear()
                device = find()
                if device is not None:
                    return device.id
                await changed.wait()
    finally:
        unsubscribe()


def _entry_id(device: dr.DeviceEntry) -> str | None:
    """The config entry a device belongs to (HA 2026.x: one; older: the first of a set)."""
    entry_id: str | None = getattr(device, "config_entry_id", None)
    if entry_id is not None:
        return entry_id
    return next(iter(device.config_entries), None)
