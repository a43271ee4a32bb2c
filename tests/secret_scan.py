"""Find test secrets where a user could see them: logs, diagnostics, flow results.

`tests/conftest.py` arms one `SecretScan` per test (autouse): a logging handler on
the root logger (with the integration's own loggers at DEBUG), a wrapper around
the integration's diagnostics functions and around every flow result HA's
`FlowManager` returns. At teardown the test fails on any hit.

What counts as a secret: every password and apikey the tests and the virtual
Sonoff use (`KNOWN_SECRETS`, `tests/harness.WIFI`), every apikey the virtual
Sonoff or the fake cloud mint during the test (their `uuid.uuid4` calls are
recorded, see `RecordingUuid`), and whatever a test adds with `scan.add()`.

Not scanned, on purpose:
- the `phone_link` placeholder of the `tasmota_ap*` progress step: the one-tap
  Tasmota link that carries the Wi-Fi and MQTT passwords by design (its text warns);
- what HA never sends to the frontend from a flow result: `data`, `result` and
  `context` of a CREATE_ENTRY (the config entry's storage; HA's flow view drops
  them, `helpers/data_entry_flow._prepare_result_json`);
- log records of the simulated devices and fakes (`virtual_sonoff.*`, `tests.*`):
  they stand for the device, which knows the secrets; they are not HA's logs.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
import importlib
import logging
from types import ModuleType
from typing import Any, Final
import uuid as uuid_module

from tests.harness import WIFI

KNOWN_SECRETS: Final = frozenset(
    {
        str(WIFI["wifi_password"]),  # tests/harness.py: the home Wi-Fi of every HA-level test
        "secret-password",  # tests/test_init.py entry data
        "mqtt-pw",  # tests/test_tasmota_handoff.py MQTT entry
        "wifi-pw",  # tests/test_tasmota_handoff.py Wi-Fi, tests/emulator
        "mqtt-pass-xyz",  # tests/test_diagnostics.py broker login
        "6a1b2c3d-4e5f-6789-abcd-ef0123456789",  # tests/test_diagnostics.py apikey
        "very-secret-psk",  # tests/proto/test_setup_ap.py
        "wifi-secret-pw",  # tests/proto/test_tasmota_handoff.py
        "home-wifi-secret",  # tests/emulator/test_setup_mode.py
        "289a1f0a-1111-2222-3333-fbceb92fe43b",  # tests/emulator/test_setup_mode.py apikey
        "0b7f6a3e-5c1d-4e8a-9f00-123456789abc",  # tests/emulator/test_ewelink_station.py
        "s3cret-pw",  # tests/emulator/test_mqtt_client.py broker login
    }
)
"""Fixed secrets of the test suite (values shorter than `MIN_SECRET_LENGTH` are not useful)."""

MIN_SECRET_LENGTH: Final = 6
"""Shorter values ("pw", "1") would match ordinary text."""

DEVICE_LOGGERS: Final = ("virtual_sonoff", "tests")
"""Loggers of the simulated devices and fakes (see the module docstring)."""

PHONE_LINK_PLACEHOLDER: Final = "phone_link"
PHONE_LINK_STEPS: Final = ("tasmota_ap",)
"""Progress actions (and their `_wifi_hop` twins) whose `phone_link` may carry secrets."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One secret found somewhere it must not be."""

    where: str
    secret: str

    def describe(self) -> str:
        """Say where, never the whole secret (the report itself goes to a log)."""
        return f"{self.where}: a secret starting {self.secret[:3]!r}"


@dataclass(slots=True)
class SecretScan:
    """Secrets of one test and the texts gathered to be checked against them."""

    secrets: set[str] = field(default_factory=lambda: set(KNOWN_SECRETS))
    texts: list[tuple[str, str]] = field(default_factory=list)
    """(where, text) pairs, checked by `hits()`."""

    def add(self, *values: str) -> None:
        """Treat `values` as secrets too (a test's own passwords, minted keys)."""
        self.secrets.update(v for v in values if len(v) >= MIN_SECRET_LENGTH)

    def check_text(self, where: str, text: str) -> None:
        """Remember `text`; it is checked at the end (secrets minted later count too)."""
        if text:
            self.texts.append((where, text))

    def check_object(self, where: str, value: object) -> None:
        """Remember every string inside `value` (mappings, sequences, scalars)."""
        self.check_text(where, "\n".join(_strings(value)))

    def check_record(self, record: logging.LogRecord) -> None:
        """Remember a log record's message and traceback, unless a device logged it."""
        if record.name.startswith(DEVICE_LOGGERS):
            return
        try:
            message = record.getMessage()
        except Exception:
            message = f"{record.msg!r} {record.args!r}"
        parts = [message]
        if record.exc_info and record.exc_info[1] is not None:
            parts.append(logging.Formatter().formatException(record.exc_info))
        if record.stack_info:
            parts.append(record.stack_info)
        self.check_text(f"log {record.name} {record.levelname}", "\n".join(parts))

    def check_flow_result(self, result: Mapping[str, Any]) -> None:
        """Remember a flow result as the frontend gets it (see the module docstring)."""
        shown = dict(result)
        if str(shown.get("type")) == "create_entry":
            for key in ("data", "result", "context"):
                shown.pop(key, None)
        placeholders = dict(shown.get("description_placeholders") or {})
        action = str(shown.get("progress_action") or "")
        if PHONE_LINK_PLACEHOLDER in placeholders and action.startswith(PHONE_LINK_STEPS):
            placeholders.pop(PHONE_LINK_PLACEHOLDER)
        shown["description_placeholders"] = placeholders
        schema = shown.pop("data_schema", None)
        if schema is not None:
            shown["data_schema"] = _serialize_schema(schema)
        shown.pop("progress_task", None)
        where = f"flow result {shown.get('handler')} {shown.get('step_id') or shown.get('reason')}"
        self.check_object(where, shown)

    def hits(self) -> list[Hit]:
        """Every (place, secret) pair found so far."""
        secrets = [s for s in self.secrets if len(s) >= MIN_SECRET_LENGTH]
        return [
            Hit(where, secret) for where, text in self.texts for secret in secrets if secret in text
        ]


class ScanHandler(logging.Handler):
    """A root-logger handler that feeds every record to a `SecretScan`."""

    def __init__(self, scan: SecretScan) -> None:
        """Feed `scan`."""
        super().__init__(logging.DEBUG)
        self.scan = scan

    def emit(self, record: logging.LogRecord) -> None:
        """Remember the record."""
        self.scan.check_record(record)


class RecordingUuid(ModuleType):
    """The `uuid` module, except that `uuid4()` results are added to a scan as secrets.

    Installed as the `uuid` global of the modules that mint apikeys with it
    (`virtual_sonoff.setup_mode`, `proto.fake_cloud`): the keys stay random.
    """

    def __init__(self, scan: SecretScan) -> None:
        """Wrap the real module."""
        super().__init__("uuid")
        self._scan = scan

    def __getattr__(self, name: str) -> Any:
        """Everything else is the real module's."""
        return getattr(uuid_module, name)

    def uuid4(self) -> uuid_module.UUID:
        """A real random UUID, remembered (in its usual spellings) as a secret."""
        value = uuid_module.uuid4()
        self._scan.add(str(value), value.hex)
        return value


def _serialize_schema(schema: Any) -> object:
    """The form's fields as the frontend gets them (defaults, suggested values)."""
    try:
        from homeassistant.helpers import config_validation as cv

        serialize = importlib.import_module("voluptuous_serialize")  # untyped on some HAs
        return serialize.convert(schema, custom_serializer=cv.custom_serializer)
    except Exception:  # an odd schema is still scanned, by its repr
        return repr(schema)


def _strings(value: object, depth: int = 0) -> Iterable[str]:
    if depth > 20:
        return
    if isinstance(value, str):
        yield value
    elif isinstance(value, bytes):
        yield value.decode(errors="replace")
    elif isinstance(value, Mapping):
        for key, item in value.items():
            yield str(key)
            yield from _strings(item, depth + 1)
    elif isinstance(value, list | tuple | set | frozenset):
        for item in value:
            yield from _strings(item, depth + 1)
    elif value is not None and not isinstance(value, int | float | bool):
        yield str(value)
