"""The asyncio MQTT client against a real Mosquitto broker on a free 127.0.0.1 port."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from virtual_sonoff.mosquitto import MosquittoBroker, MosquittoError
from virtual_sonoff.mqtt_client import (
    MqttClient,
    MqttConnectError,
    MqttMessage,
    Will,
    topic_matches,
)

pytestmark = pytest.mark.mosquitto


def test_topic_matches() -> None:
    assert topic_matches("cmnd/t/#", "cmnd/t/POWER")
    assert topic_matches("cmnd/t/#", "cmnd/t")
    assert topic_matches("a/+/c", "a/b/c")
    assert not topic_matches("a/+/c", "a/b/d")
    assert not topic_matches("a/+", "a/b/c")
    assert not topic_matches("#", "$SYS/broker")
    assert topic_matches("tasmota/discovery/+/config", "tasmota/discovery/AABB/config")


async def test_connect_subscribe_publish_receive(socket_enabled: None, tmp_path: Path) -> None:
    async with (
        MosquittoBroker(tmp_path) as broker,
        MqttClient(broker.host, broker.port, client_id="listener") as listener,
        MqttClient(broker.host, broker.port, client_id="talker") as talker,
    ):
        seen: list[MqttMessage] = []

        async def on_power(message: MqttMessage) -> None:
            seen.append(message)

        assert await listener.subscribe("cmnd/+/POWER", on_power) == 0
        assert await listener.subscribe("stat/#") == 0
        await talker.publish("cmnd/dev/POWER", "ON")
        await talker.publish("stat/dev/RESULT", b'{"POWER":"ON"}')
        await talker.publish("other/topic", "ignored")
        first = await listener.next_message()
        second = await listener.next_message()
        assert (first.topic, first.text) == ("cmnd/dev/POWER", "ON")
        assert (second.topic, second.payload) == ("stat/dev/RESULT", b'{"POWER":"ON"}')
        assert [m.topic for m in seen] == ["cmnd/dev/POWER"]
        await listener.ping()
        assert listener.connected
    assert not listener.connected
    assert not broker.running


async def test_retained_message_delivered_to_late_subscriber(
    socket_enabled: None, tmp_path: Path
) -> None:
    async with MosquittoBroker(tmp_path) as broker:
        async with MqttClient(broker.host, broker.port, client_id="pub") as pub:
            await pub.publish("tele/dev/LWT", "Online", retain=True)
        async with MqttClient(broker.host, broker.port, client_id="sub") as sub:
            await sub.subscribe("tele/#")
            message = await sub.next_message()
        assert (message.topic, message.text, message.retain) == ("tele/dev/LWT", "Online", True)


async def test_will_published_on_abrupt_close_not_on_disconnect(
    socket_enabled: None, tmp_path: Path
) -> None:
    async with (
        MosquittoBroker(tmp_path) as broker,
        MqttClient(broker.host, broker.port, client_id="watcher") as watcher,
    ):
        await watcher.subscribe("tele/+/LWT")
        polite = MqttClient(
            broker.host, broker.port, client_id="polite", will=Will("tele/polite/LWT", b"Offline")
        )
        await polite.connect()
        await polite.disconnect()
        rude = MqttClient(
            broker.host,
            broker.port,
            client_id="rude",
            will=Will("tele/rude/LWT", b"Offline", retain=True),
        )
        await rude.connect()
        await rude.abort()
        message = await watcher.next_message()
        assert (message.topic, message.text) == ("tele/rude/LWT", "Offline")
        with pytest.raises(TimeoutError):
            await watcher.next_message(within=0.2)


async def test_qos1_inbound_is_acknowledged(socket_enabled: None, tmp_path: Path) -> None:
    """The broker downgrades to the subscription QoS; subscribe with QoS 1 to get a QoS 1 PUBLISH.

    Our client only publishes QoS 0, so a QoS 1 message is injected by a raw socket.
    """
    async with (
        MosquittoBroker(tmp_path) as broker,
        MqttClient(broker.host, broker.port, client_id="q1") as client,
    ):
        assert await client.subscribe("q/#", qos=1) == 1
        reader, writer = await asyncio.open_connection(broker.host, broker.port)
        try:
            connect_body = b"\x00\x04MQTT\x04\x02\x00\x3c" + b"\x00\x03raw"
            writer.write(bytes([0x10, len(connect_body)]) + connect_body)
            assert (await reader.readexactly(4))[3] == 0
            publish_body = b"\x00\x03q/x" + b"\x00\x07" + b"hello"
            writer.write(bytes([0x32, len(publish_body)]) + publish_body)
            assert await reader.readexactly(4) == b"\x40\x02\x00\x07"  # broker's PUBACK
            message = await client.next_message()
            assert (message.topic, message.text, message.qos) == ("q/x", "hello", 1)
            # If our PUBACK were missing, the broker would resend on a ping cycle; the
            # connection staying healthy after a ping shows the flow completed.
            await client.ping()
        finally:
            writer.close()
            await writer.wait_closed()


async def test_password_protected_broker(socket_enabled: None, tmp_path: Path) -> None:
    async with MosquittoBroker(tmp_path, username="ha", password="s3cret-pw") as broker:
        assert "s3cret-pw" not in repr(broker)
        async with MqttClient(
            broker.host, broker.port, client_id="good", username="ha", password="s3cret-pw"
        ) as good:
            assert good.connected
            assert "s3cret-pw" not in repr(good)
        bad = MqttClient(broker.host, broker.port, client_id="bad", username="ha", password="wrong")
        with pytest.raises(MqttConnectError) as err:
            await bad.connect()
        assert err.value.return_code == 5  # Mosquitto answers "not authorized" (5)
        anonymous = MqttClient(broker.host, broker.port, client_id="anon")
        with pytest.raises(MqttConnectError):
            await anonymous.connect()


async def test_broker_stopped_mid_test_drops_clients(socket_enabled: None, tmp_path: Path) -> None:
    async with MosquittoBroker(tmp_path) as broker:
        client = MqttClient(broker.host, broker.port, client_id="c")
        await client.connect()
        await broker.stop()
        async with asyncio.timeout(5):
            await client.wait_closed()
        assert not client.connected
        await client.disconnect()
        with pytest.raises(MqttConnectError):
            await MqttClient(broker.host, broker.port, client_id="late").connect()


async def test_missing_executable_is_a_clear_error(tmp_path: Path) -> None:
    broker = MosquittoBroker(tmp_path, executable=tmp_path / "no-mosquitto")
    with pytest.raises(MosquittoError, match="Debian package `mosquitto`"):
        await broker.start()
