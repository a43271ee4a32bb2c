"""Supervisor network-API hop against a fake Supervisor on 127.0.0.1.

What is faked is the Supervisor's NetworkManager and the radio behind it (`fake_supervisor.py`
decides from its AP list whether an activation succeeds); the HTTP exchange is real (aiohttp
client and server on loopback), and the fake validates bodies like SCHEMA_UPDATE.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
import contextlib
from ipaddress import IPv4Interface
from typing import Any

import aiohttp
import pytest

from custom_components.sonoff_ota.proto.host_wifi_supervisor import SupervisorWifiHop
from custom_components.sonoff_ota.proto.host_wifi_targets import finalstage_target, itead_target
from custom_components.sonoff_ota.proto.host_wifi_types import HopError, HopErrorCode

from .fake_supervisor import FakeSupervisor, running_supervisor

DEVICEID = "10000b77c1"
ITEAD = f"ITEAD-{DEVICEID}"
TOKEN = "test-supervisor-token"


@contextlib.asynccontextmanager
async def supervisor(
    **kwargs: Any,
) -> AsyncIterator[tuple[FakeSupervisor, str, aiohttp.ClientSession]]:
    fake = FakeSupervisor(token=TOKEN, **kwargs)
    fake.access_points[ITEAD] = "12345678"
    fake.access_points["FinalStage"] = None
    async with running_supervisor(fake) as url, aiohttp.ClientSession() as session:
        yield fake, url, session


def make_hop(url: str, session: aiohttp.ClientSession, **kwargs: Any) -> SupervisorWifiHop:
    kwargs.setdefault("poll_interval", 0.01)
    kwargs.setdefault("settle_timeout", 2.0)
    return SupervisorWifiHop(session, base_url=url, token=TOKEN, **kwargs)


async def test_both_hops_raw_json_and_cleanup(socket_enabled: None) -> None:
    """ITEAD then FinalStage through the Supervisor API; each profile is deleted while still
    active; at the end no saved profile is left. The radio is faked."""
    async with supervisor() as (fake, url, session):
        async with make_hop(url, session) as hop:
            plan = await hop.prepare()
            assert plan.interface == "wlan0"
            assert not plan.carries_lan
            joined = await hop.join(itead_target(DEVICEID, timeout=5))
            assert joined.address == IPv4Interface("10.10.7.2/24")
            assert fake.wlan0.connected
            assert fake.wlan0.address == ["10.10.7.2/24"]
            joined = await hop.join(finalstage_target(timeout=5))
            assert joined.address == IPv4Interface("192.168.4.2/24")
            assert [p.ssid for p in fake.profiles] == ["FinalStage"]
            # fresh create: no WPA block carried over onto the open AP's profile
            assert fake.profiles[0].sections["wifi"] == {
                "mode": "infrastructure",
                "ssid": "FinalStage",
                "auth": "open",
            }
        assert fake.update_calls() == [
            {
                "enabled": True,
                "wifi": {
                    "mode": "infrastructure",
                    "ssid": ITEAD,
                    "auth": "wpa-psk",
                    "psk": "12345678",
                },
                "ipv4": {"method": "static", "address": ["10.10.7.2/24"]},
                "ipv6": {"method": "disabled"},
            },
            {"enabled": False},
            {
                "enabled": True,
                "wifi": {"mode": "infrastructure", "ssid": "FinalStage", "auth": "open"},
                "ipv4": {"method": "static", "address": ["192.168.4.2/24"]},
                "ipv6": {"method": "disabled"},
            },
            {"enabled": False},
        ]
        assert all(header == f"Bearer {TOKEN}" for *_, header in fake.calls)
        assert fake.profiles == []
        assert not fake.wlan0.connected
        assert fake.eth0.connected
        assert fake.eth0.address == ["192.168.1.10/24"]
        assert hop.last_restore is not None
        assert hop.last_restore.restored


async def test_fake_rejects_method_like_the_real_schema(socket_enabled: None) -> None:
    """The body aiohasupervisor's `WifiConfig` produces (`wifi.method`) is a 400; the same
    body with `auth` is accepted. No radio involved beyond the fake one."""
    from aiohasupervisor.models import (
        AuthMethod,
        InterfaceMethod,
        IPv4Config,
        NetworkInterfaceConfig,
        WifiConfig,
    )

    typed = NetworkInterfaceConfig(
        ipv4=IPv4Config(method=InterfaceMethod.STATIC, address=[IPv4Interface("10.10.7.2/24")]),
        wifi=WifiConfig(ssid=ITEAD, method=AuthMethod.WPA_PSK, psk="12345678"),
    ).to_dict()
    assert "method" in typed["wifi"]
    assert "auth" not in typed["wifi"]
    async with supervisor() as (fake, url, session):
        headers = {"Authorization": f"Bearer {TOKEN}"}
        async with session.post(
            f"{url}/network/interface/wlan0/update", json=typed, headers=headers
        ) as resp:
            assert resp.status == 400
            message = (await resp.json())["message"]
            # voluptuous (HA 2025.x) and probatio (HA 2026.x) word it differently
            assert "method" in message
            assert "extra keys not allowed" in message or "not a valid option" in message
        assert not fake.wlan0.connected
        raw = {
            "wifi": {"ssid": ITEAD, "auth": "wpa-psk", "psk": "12345678"},
            "ipv4": {"method": "static", "address": ["10.10.7.2/24"]},
        }
        async with session.post(
            f"{url}/network/interface/wlan0/update", json=raw, headers=headers
        ) as resp:
            assert resp.status == 200
        assert fake.wlan0.connected


async def test_wrong_psk(socket_enabled: None) -> None:
    """The (fake) AP has another PSK: the Supervisor only says "Activating connection failed";
    the AP is visible in /accesspoints, so it is wrong_psk. The saved inactive profile that the
    API cannot delete is reported."""
    async with supervisor() as (fake, url, session):
        fake.access_points[ITEAD] = "another-psk"
        async with make_hop(url, session) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert err.value.code is HopErrorCode.WRONG_PSK
        assert any(path.endswith("/accesspoints") for _, path, _, _ in fake.calls)
        assert hop.last_restore is not None
        assert not hop.last_restore.restored
        assert "cannot delete" in hop.last_restore.detail
        assert [p.ssid for p in fake.profiles] == [ITEAD]  # the real limitation, spec §1.3
        assert "12345678" not in hop.last_restore.detail
        assert "12345678" not in repr(hop)


async def test_ap_missing(socket_enabled: None) -> None:
    """No ITEAD AP in (fake) range: activation fails and the scan does not list it."""
    async with supervisor() as (fake, url, session):
        del fake.access_points[ITEAD]
        async with make_hop(url, session) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert err.value.code is HopErrorCode.AP_MISSING


async def test_slow_activation_within_timeout(socket_enabled: None) -> None:
    """`update` blocks while the (fake) radio activates slowly; a long client timeout waits."""
    async with supervisor(activation_delay=0.4) as (fake, url, session):
        async with make_hop(url, session, request_timeout=5) as hop:
            joined = await hop.join(itead_target(DEVICEID, timeout=5))
            assert joined.address == IPv4Interface("10.10.7.2/24")
        assert fake.profiles == []


async def test_update_times_out_then_profile_still_cleaned(socket_enabled: None) -> None:
    """The client gives up before the (fake) activation ends; the Supervisor carries on
    (shielded), so restore waits for it to settle and then deletes the profile."""
    async with supervisor(activation_delay=0.5) as (fake, url, session):
        async with make_hop(url, session, request_timeout=0.1) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(itead_target(DEVICEID, timeout=5))
        assert err.value.code is HopErrorCode.ACTIVATION_TIMEOUT
        assert fake.update_calls()[-1] == {"enabled": False}
        assert fake.profiles == []
        assert not fake.wlan0.connected


async def test_wifi_only_host_confirmation_and_restore(socket_enabled: None) -> None:
    """No Ethernet: wlan0 is primary. Refused without confirmation, then without the home
    PSK; with both, the hop runs and the home Wi-Fi is re-created. The radio is faked."""
    async with supervisor(eth_address=None, home_ssid="HomeNet") as (fake, url, session):
        async with make_hop(url, session) as hop:
            with pytest.raises(HopError) as err:
                await hop.prepare()
            assert err.value.code is HopErrorCode.NEEDS_CONFIRMATION
        async with make_hop(url, session, confirm_wifi_only=True) as hop:
            with pytest.raises(HopError) as err:
                await hop.prepare()
            assert err.value.code is HopErrorCode.NEEDS_HOME_CREDENTIALS
        assert fake.update_calls() == []

        async with make_hop(
            url, session, confirm_wifi_only=True, home_wifi=("HomeNet", "home-secret")
        ) as hop:
            plan = await hop.prepare()
            assert plan.carries_lan
            await hop.join(itead_target(DEVICEID, timeout=5))
            # the Supervisor edited the active home profile in place (one profile per iface)
            assert [p.ssid for p in fake.profiles] == [ITEAD]
        assert fake.update_calls()[-2:] == [
            {"enabled": False},
            {
                "enabled": True,
                "wifi": {
                    "mode": "infrastructure",
                    "ssid": "HomeNet",
                    "auth": "wpa-psk",
                    "psk": "home-secret",
                },
                "ipv4": {"method": "auto"},
                "ipv6": {"method": "auto"},
            },
        ]
        assert [p.ssid for p in fake.profiles] == ["HomeNet"]
        assert fake.wlan0.connected
        assert fake.wlan0.address == ["192.168.1.20/24"]
        assert hop.last_restore is not None
        assert hop.last_restore.restored


async def test_lan_clash_refused_before_any_change(socket_enabled: None) -> None:
    """The LAN is 192.168.4.0/24: refused before any update is sent (no radio involved)."""
    async with supervisor(eth_address="192.168.4.77/24") as (fake, url, session):
        async with make_hop(url, session) as hop:
            with pytest.raises(HopError) as err:
                await hop.join(finalstage_target(timeout=5))
        assert err.value.code is HopErrorCode.LAN_CLASH
        assert fake.update_calls() == []


async def test_bad_token_is_backend_unavailable(socket_enabled: None) -> None:
    """A wrong token gives 401 on /network/info: backend_unavailable."""
    async with supervisor() as (_fake, url, session):
        hop = SupervisorWifiHop(session, base_url=url, token="wrong")
        async with hop:
            with pytest.raises(HopError) as err:
                await hop.prepare()
        assert err.value.code is HopErrorCode.BACKEND_UNAVAILABLE
