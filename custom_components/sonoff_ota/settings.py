"""Device and listener addresses: real defaults, overridable from YAML.

The real firmware hard-codes its addresses (10.10.7.1, 192.168.4.1, and
192.168.4.2:8080 for FinalStage). They are defaults here, never constants in
the code that uses them, so that tests, the demo and users with unusual
networks can point the integration elsewhere:

    sonoff_ota:
      setup_ap_url: http://10.10.7.1
      tasmota_ap_url: http://192.168.4.1
      finalstage_bind: 0.0.0.0
      finalstage_port: 8080
      tls_bind: 0.0.0.0
      tls_port: 8443
      callback_host: 192.168.1.10
      device_broker_host: 192.168.1.10
      wifi_hop: auto            # auto | networkmanager | supervisor | manual
      nm_bus_address: unix:path=/run/dbus/system_bus_socket
      supervisor_url: http://supervisor
      wifi_interface: wlan0

`wifi_hop` says who moves this host's Wi-Fi onto the device's access points during a
setup-mode flash (shared/spec/host-wifi-hopping.md): `auto` picks NetworkManager over the
system D-Bus when reachable, else the Supervisor when `SUPERVISOR`/`SUPERVISOR_TOKEN` are
set, else the user (manual).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Final, NamedTuple

from homeassistant.core import HomeAssistant
from homeassistant.helpers import config_validation as cv
from homeassistant.util.hass_dict import HassKey
import voluptuous as vol

from .const import DOMAIN
from .proto.firmware_sources import FirmwareSources

SETTINGS_KEY: Final[HassKey[Settings]] = HassKey(f"{DOMAIN}_settings")


# Records read at start-up are NamedTuples: HA imports this module with the integration,
# and creating a NamedTuple class costs a fraction of a frozen dataclass (ARCHITECTURE.md,
# "What loads when").
class Timeouts(NamedTuple):
    """How long each waiting stage waits before it offers a retry (seconds)."""

    setup_ap: float = 300.0
    dispatch: float = 300.0
    upgrade: float = 300.0
    finalstage: float = 900.0
    diy_request: float = 10.0
    """One DIY REST request (not ota_flash, which waits for the device's download)."""
    diy_flash: float = 600.0
    diy_reboot: float = 300.0
    tasmota_ap: float = 180.0
    discovery: float = 300.0
    pinning_grace: float = 10.0
    """A TLS hello with no request after this long means certificate pinning."""
    wifi_join: float = 45.0
    """One Wi-Fi hop: association and address (host-wifi-hopping.md §1.6)."""
    wifi_scan: float = 5.0
    """Between two Wi-Fi scans while looking for the device's access point."""
    download_stall: float = 60.0
    """A firmware download that sends nothing for this long has stalled (sock_read)."""
    download: float = 300.0
    """A whole firmware download (a trickle that never stalls still ends)."""
    tasmota_upgrade: float = 600.0
    """Lite → full over Tasmota's own OTA, restarts and the -minimal step included."""
    tasmota_upgrade_cooldown: float = 600.0
    """After an upgrade timed out: no new one until the device is back, or this long."""


class Settings(NamedTuple):
    """Where devices and our listeners are (see the module docstring)."""

    setup_ap_url: str = "http://10.10.7.1"
    tasmota_ap_url: str = "http://192.168.4.1"
    finalstage_bind: str = "0.0.0.0"  # noqa: S104 - the host gets 192.168.4.2 only later
    finalstage_port: int = 8080
    tls_bind: str = "0.0.0.0"  # noqa: S104 - devices reach us on the LAN address
    tls_port: int = 8443
    callback_host: str | None = None
    """The address devices call back; default: the HA host's source IP."""
    device_broker_host: str | None = None
    """The MQTT broker address Tasmota is given; default: derived from HA's MQTT entry."""
    pacing_scale: float = 1.0
    """Multiplies the pauses of paced downloads (SonOTA's 0.9 s, then 0.3 s per 1400 B)."""
    serve_from_ha: bool = True
    """Serve DIY downloads from HA's own server when it is plain HTTP."""
    firmware: Mapping[str, str] = MappingProxyType({})
    """Overrides of firmware source URLs (see proto.firmware_sources.FirmwareSources)."""
    wifi_hop: str = "auto"
    """Who moves the host's Wi-Fi: auto, networkmanager, supervisor or manual."""
    nm_bus_address: str | None = None
    """NetworkManager's D-Bus; default: the system bus."""
    supervisor_url: str | None = None
    """The Supervisor's API; default: `http://$SUPERVISOR`."""
    wifi_interface: str | None = None
    """The Wi-Fi interface to move; default: a spare one, else the one carrying the LAN."""
    tasmota_releases_url: str | None = None
    """Where the newest Tasmota release is read; default: GitHub's latest release; "": off."""
    tasmota_ota_base_url: str | None = None
    """Tasmota's OTA folder (`<base>/<build>.bin.gz`, plain http); default ota.tasmota.com."""
    timeouts: Timeouts = Timeouts()


_TIMEOUT_SCHEMA = vol.Schema(
    {
        vol.Optional(name): vol.All(vol.Coerce(float), vol.Range(min=0.05))
        for name in Timeouts._fields
    }
)

SETTINGS_SCHEMA = vol.Schema(
    {
        vol.Optional("setup_ap_url"): cv.url,
        vol.Optional("tasmota_ap_url"): cv.url,
        vol.Optional("finalstage_bind"): cv.string,
        vol.Optional("finalstage_port"): cv.port,
        vol.Optional("tls_bind"): cv.string,
        vol.Optional("tls_port"): cv.port,
        vol.Optional("callback_host"): cv.string,
        vol.Optional("device_broker_host"): cv.string,
        vol.Optional("pacing_scale"): vol.All(vol.Coerce(float), vol.Range(min=0.001, max=10)),
        vol.Optional("serve_from_ha"): cv.boolean,
        # Source URLs and pins of the firmware store (a local mirror, for example);
        # an unknown key is a YAML error, not a crash at the first flash.
        vol.Optional("firmware"): {
            vol.In([name for name in FirmwareSources._fields if name != "pinned_sha256"]): (
                cv.string
            )
        },
        vol.Optional("wifi_hop"): vol.In(["auto", "networkmanager", "supervisor", "manual"]),
        vol.Optional("nm_bus_address"): cv.string,
        vol.Optional("supervisor_url"): cv.url,
        vol.Optional("wifi_interface"): cv.string,
        vol.Optional("tasmota_releases_url"): vol.Any("", cv.url),
        vol.Optional("tasmota_ota_base_url"): cv.url,
        vol.Optional("timeouts"): _TIMEOUT_SCHEMA,
    }
)


def settings_from_config(config: dict[str, Any]) -> Settings:
    """Build `Settings` from the validated YAML mapping."""
    values = dict(config)
    timeouts = Timeouts(**values.pop("timeouts", {}))
    return Settings(**values, timeouts=timeouts)


def get_settings(hass: HomeAssistant) -> Settings:
    """The settings in force (defaults when YAML gave none)."""
    return hass.data.get(SETTINGS_KEY) or Settings()
