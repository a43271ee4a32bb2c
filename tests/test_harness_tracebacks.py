"""`harness.unexpected_tracebacks`: what the fault tests forgive, and what they never do.

The broker fault tests rely on it to tell HA's own complaints (its MQTT client
without a broker, a peer's reset socket) from a traceback of ours. Those records
appear only under load, so this checks the filter on records made here.
"""

from __future__ import annotations

import logging

from homeassistant.exceptions import HomeAssistantError
import pytest

from tests.harness import unexpected_tracebacks

BROKER_GONE = HomeAssistantError(translation_domain="mqtt", translation_key="mqtt_broker_error")


def _raised(error: BaseException, filename: str) -> BaseException:
    """`error` with a traceback whose frame is in `filename`."""
    namespace: dict[str, object] = {}
    exec(compile("def fail(error):\n    raise error\n", filename, "exec"), namespace)  # noqa: S102
    try:
        namespace["fail"](error)  # type: ignore[operator]
    except BaseException as raised:
        return raised
    raise AssertionError("not raised")


def _log(logger: str, error: BaseException, filename: str = "/site-packages/x.py") -> None:
    logging.getLogger(logger).error("failed", exc_info=_raised(error, filename))


def test_others_complaints_about_a_vanished_broker_or_socket_are_forgiven(
    caplog: pytest.LogCaptureFixture,
) -> None:
    _log("homeassistant.components.mqtt.client", BROKER_GONE)
    _log("hatasmota.discovery", BROKER_GONE)
    _log("asyncio", ConnectionResetError(104, "Connection reset by peer"))
    assert len(caplog.records) == 3
    assert unexpected_tracebacks(caplog) == []


@pytest.mark.parametrize(
    ("logger", "error", "filename"),
    [
        pytest.param(
            "aiohttp.server", ValueError("bad"), "/site-packages/x.py", id="any-other-error"
        ),
        pytest.param(
            "homeassistant.core",
            BROKER_GONE,
            "/work/custom_components/sonoff_ota/tasmota_link.py",
            id="through-our-code",
        ),
        pytest.param(
            "custom_components.sonoff_ota.handoff_run",
            ConnectionResetError(104, "reset"),
            "/site-packages/x.py",
            id="our-logger",
        ),
        pytest.param(
            "homeassistant.core",
            HomeAssistantError("other"),
            "/site-packages/x.py",
            id="another-ha-error",
        ),
    ],
)
def test_every_other_traceback_counts(
    caplog: pytest.LogCaptureFixture, logger: str, error: BaseException, filename: str
) -> None:
    _log(logger, error, filename)
    assert len(unexpected_tracebacks(caplog)) == 1


def test_a_traceback_in_the_message_counts(caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("homeassistant.core").error("Traceback (most recent call last): ...")
    assert len(unexpected_tracebacks(caplog)) == 1
