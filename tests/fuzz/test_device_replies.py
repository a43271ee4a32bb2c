"""What devices answer us: hostile replies, TXT records and discovery messages.

Each client talks over real TCP on 127.0.0.1 to a `HostileDevice` that answers every request
with a Hypothesis-generated raw HTTP reply (any status, any body, wrong framing, a reset in the
middle of the body, bytes that are not HTTP at all). The clients must return a typed result or
raise their own typed error. mDNS and MQTT are not run here: `parse_advert` and
`parse_discovery` get exactly what HA's zeroconf and MQTT integrations would hand them (the MQTT
path through a real broker is in test_ha_surfaces.py). Examples are derandomized: the same
inputs every run.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
from hypothesis import given
import pytest

from .driver import drive, fuzz_settings
from .strategies import (
    device_reply,
    discovery_message,
    diy_body,
    setup_ap_body,
    setup_device_body,
    tasmota_body,
    txt_record,
)
from .surfaces import (
    HostileDevice,
    advert_case,
    discovery_case,
    diy_case,
    setup_ap_case,
    tasmota_case,
)

EXAMPLES = 40


@pytest.fixture
async def hostile(
    socket_enabled: None,
) -> AsyncIterator[tuple[HostileDevice, aiohttp.ClientSession]]:
    async with HostileDevice().running() as device, aiohttp.ClientSession() as session:
        yield device, session


async def test_setup_ap_client_survives_hostile_replies(
    hostile: tuple[HostileDevice, aiohttp.ClientSession],
) -> None:
    device, session = hostile
    tally = await drive(
        device_reply(setup_device_body | setup_ap_body),
        lambda reply: setup_ap_case(device, session, reply),
        max_examples=EXAMPLES,
        within=10,
    )
    assert tally.cases >= EXAMPLES


async def test_diy_client_survives_hostile_replies(
    hostile: tuple[HostileDevice, aiohttp.ClientSession],
) -> None:
    device, session = hostile
    tally = await drive(
        device_reply(diy_body),
        lambda reply: diy_case(device, session, reply),
        max_examples=EXAMPLES,
        within=15,
    )
    assert tally.cases >= EXAMPLES


async def test_tasmota_client_survives_hostile_replies(
    hostile: tuple[HostileDevice, aiohttp.ClientSession],
) -> None:
    device, session = hostile
    tally = await drive(
        device_reply(tasmota_body),
        lambda reply: tasmota_case(device, session, reply),
        max_examples=EXAMPLES,
        within=10,
    )
    assert tally.cases >= EXAMPLES


@fuzz_settings(300)
@given(txt_record())
def test_parse_advert_takes_any_txt_record(
    record: tuple[dict[str, str | bytes | None] | dict[bytes, str | bytes | None], str],
) -> None:
    advert_case(record)


@fuzz_settings(300)
@given(discovery_message())
def test_parse_discovery_takes_any_message(message: tuple[str, bytes]) -> None:
    discovery_case(message)
