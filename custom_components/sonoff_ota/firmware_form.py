"""The firmware part of the UI: the user's choice of image, and what each failure says.

Every flash takes the newest Tasmota lite that fits its path unless the user
picks a release number, a URL or an uploaded file in the collapsed "Firmware"
section of the flow (or in the `firmware` step shown after a failure). An
upload is validated for the path's role as soon as it arrives, so a bad file is
refused on the form it was picked in, before anything else happens.

`firmware_error_message` turns any `FirmwareError` into a translation key
(`firmware_<code>`, one per failure, with the first image issue for an invalid
image) and the placeholders its text needs. The same keys exist under
`config.error` (flow forms) and `exceptions` (the dashboard's install action).
`FirmwareState` is what one config flow knows of the choice between its steps.
"""

from __future__ import annotations

from collections.abc import Mapping
import logging
from typing import TYPE_CHECKING, Any, NamedTuple

from homeassistant.components.file_upload import process_uploaded_file
from homeassistant.core import HomeAssistant
from homeassistant.data_entry_flow import section
from homeassistant.helpers.selector import (
    FileSelector,
    FileSelectorConfig,
    TextSelector,
    TextSelectorConfig,
    TextSelectorType,
)
import voluptuous as vol

from .proto.firmware_choice import FirmwareChoice, FirmwareSource
from .proto.firmware_sources import normalize_tasmota_version, redact_url

if TYPE_CHECKING:
    from .proto.firmware_cache import StoredImage
    from .proto.firmware_errors import FirmwareError
    from .proto.firmware_image import ImageRole, IssueCode
    from .proto.firmware_store import FirmwareStore

_LOGGER = logging.getLogger(__name__)

CONF_FIRMWARE = "firmware"
CONF_TASMOTA_VERSION = "tasmota_version"
CONF_FIRMWARE_URL = "firmware_url"
CONF_FIRMWARE_FILE = "firmware_file"
_FIELDS = (CONF_TASMOTA_VERSION, CONF_FIRMWARE_URL, CONF_FIRMWARE_FILE)

# Every placeholder any firmware message uses: the frontend shows a missing one raw.
_PLACEHOLDERS = (
    "source",
    "url",
    "filename",
    "status",
    "reason",
    "received",
    "expected",
    "limit",
    "size",
    "minimum",
    "found",
    "found_name",
    "expected_name",
    "sha256",
    "name",
    "role",
    "latest_error",
    "fallback_version",
    "fallback_error",
)


def firmware_fields(defaults: Mapping[str, Any] | None = None) -> dict[Any, Any]:
    """The three optional fields; all empty means "the newest lite that fits"."""
    defaults = defaults or {}
    return {
        vol.Optional(
            CONF_TASMOTA_VERSION,
            description={"suggested_value": defaults.get(CONF_TASMOTA_VERSION)},
        ): TextSelector(),
        vol.Optional(
            CONF_FIRMWARE_URL, description={"suggested_value": defaults.get(CONF_FIRMWARE_URL)}
        ): TextSelector(TextSelectorConfig(type=TextSelectorType.URL)),
        vol.Optional(CONF_FIRMWARE_FILE): FileSelector(FileSelectorConfig(accept=".bin")),
    }


def firmware_section() -> dict[Any, Any]:
    """The collapsed "Firmware" section of the setup-mode and DIY forms."""
    # `Any`: HA 2026.x types sections with probatio schemas (voluptuous is aliased to
    # probatio at runtime), 2025.x with voluptuous ones.
    fields: Any = vol.Schema(firmware_fields())
    return {vol.Required(CONF_FIRMWARE, default={}): section(fields, {"collapsed": True})}


class FirmwareState:
    """One flow's firmware: the choice, what was typed, and what stops or delays the flash."""

    __slots__ = ("checked", "choice", "error", "notice", "values")

    def __init__(self) -> None:
        """The default firmware, nothing typed or checked yet."""
        self.choice: FirmwareChoice = FirmwareChoice()
        self.values: dict[str, Any] = {}
        """What was typed, for the `firmware` step (never the upload: its id is gone once read)."""
        self.checked: bool = False
        """The chosen image was fetched and checked for this flash."""
        self.error: tuple[str, dict[str, str]] | None = None
        """The image cannot be used: the `firmware` step's error key and placeholders."""
        self.notice: tuple[str, dict[str, str]] | None = None
        """The image is not exactly the one asked for: the notice step and its placeholders."""

    def step_after_check(self) -> str | None:
        """The firmware step the flow shows before (or instead of) the flash, if any."""
        if self.error is not None:
            return "firmware"
        if self.notice is not None:
            return self.notice[0]
        return None


class ChoiceResult(NamedTuple):
    """A parsed choice, or the form error (key and placeholders) that stops it."""

    choice: FirmwareChoice | None
    error: str | None = None
    placeholders: Mapping[str, str] | None = None


def _read_upload(hass: HomeAssistant, file_id: str) -> tuple[bytes | None, str, int]:
    """(bytes or None when too large, file name, size); runs in the executor."""
    from .proto.firmware_download import MAX_DOWNLOAD_BYTES  # noqa: PLC0415 - see below

    with process_uploaded_file(hass, file_id) as path:
        size = path.stat().st_size
        name = path.name
        if size > MAX_DOWNLOAD_BYTES:
            return None, name, size
        return path.read_bytes(), name, size


async def async_parse_choice(
    hass: HomeAssistant, store: FirmwareStore, values: Mapping[str, Any], role: ImageRole
) -> ChoiceResult:
    """Turn the form's firmware fields into a choice; an upload is validated right away."""
    # Loaded: the flows load the flash stack before they take a choice (`store` is its).
    from .proto.firmware_download import MAX_DOWNLOAD_BYTES  # noqa: PLC0415
    from .proto.firmware_errors import FirmwareError  # noqa: PLC0415

    given = [key for key in _FIELDS if str(values.get(key) or "").strip()]
    if len(given) > 1:
        return ChoiceResult(None, "firmware_choose_one")
    if not given:
        return ChoiceResult(FirmwareChoice())
    key = given[0]
    value = str(values[key]).strip()
    if key == CONF_TASMOTA_VERSION:
        version = normalize_tasmota_version(value)
        if version is None:
            return ChoiceResult(None, "firmware_bad_version", {"version": value})
        return ChoiceResult(FirmwareChoice(FirmwareSource.VERSION, version=version))
    if key == CONF_FIRMWARE_URL:
        if not value.lower().startswith(("http://", "https://")):
            return ChoiceResult(
                None, "firmware_bad_url", _message_placeholders({"url": redact_url(value)})
            )
        return ChoiceResult(FirmwareChoice(FirmwareSource.URL, url=value))
    try:
        data, filename, size = await hass.async_add_executor_job(_read_upload, hass, value)
    except ValueError:  # the upload expired or never arrived
        return ChoiceResult(None, "firmware_upload_missing")
    if data is None:
        return ChoiceResult(
            None,
            "firmware_download_too_large",
            _message_placeholders(
                {"source": filename, "url": filename, "received": size, "limit": MAX_DOWNLOAD_BYTES}
            ),
        )
    try:
        stored = await store.store_upload(data, filename, role)
    except FirmwareError as err:
        key, placeholders = firmware_error_message(err)
        _LOGGER.warning("Uploaded firmware %s refused: %s", filename, err)
        return ChoiceResult(None, key, placeholders)
    _LOGGER.info("Uploaded firmware %s accepted (sha256 %s)", filename, stored.sha256)
    return ChoiceResult(FirmwareChoice(FirmwareSource.UPLOAD, upload=stored))


def _message_placeholders(params: Mapping[str, str | int]) -> dict[str, str]:
    values = dict.fromkeys(_PLACEHOLDERS, "?")
    values.update({key: str(value) for key, value in params.items()})
    return values


def firmware_error_message(err: FirmwareError) -> tuple[str, dict[str, str]]:
    """The translation key and placeholders that say what is wrong and what to do."""
    # Loaded: a `FirmwareError` comes from the flash stack.
    from .proto.firmware_errors import FirmwareErrorCode  # noqa: PLC0415

    params: dict[str, str | int] = dict(err.params)
    source = params.get("url") or params.get("filename") or params.get("latest_url") or "?"
    params.setdefault("source", source)
    if err.code is FirmwareErrorCode.INVALID_IMAGE and err.issues:
        priority = _issue_priority()
        issue = min(
            err.issues,
            key=lambda i: priority.index(i.code) if i.code in priority else len(priority),
        )
        return f"firmware_{issue.code}", _message_placeholders({**issue.params, **params})
    return f"firmware_{err.code}", _message_placeholders(params)


def _issue_priority() -> tuple[IssueCode, ...]:
    """The image issues, the most telling first (the message of an image names one).

    An error page is "too small" before it is "wrong magic", a .gz name says more than
    its bytes.
    """
    from .proto.firmware_image import IssueCode  # noqa: PLC0415 - loaded with the error

    return (
        IssueCode.EMPTY,
        IssueCode.GZIP_NAME,
        IssueCode.GZIP,
        IssueCode.MINIMAL_BUILD,
        IssueCode.TOO_SMALL,
        IssueCode.BAD_MAGIC,
        IssueCode.BAD_FLASH_MODE,
        IssueCode.TOO_LARGE,
        IssueCode.HASH_MISMATCH,
        IssueCode.KNOWN_OTHER_ROLE,
    )


def notice_placeholders(image: StoredImage, choice: FirmwareChoice) -> dict[str, str]:
    """What the "cached copy" / "older release" notice shows."""
    return {
        "source": image.source_url or image.filename,
        "filename": image.filename,
        "size": str(image.size),
        "sha256": image.sha256,
        "reason": str(image.fetch_error or image.fallback_reason or ""),
        "choice": choice.describe(),
    }


def notice_step(image: StoredImage) -> str | None:
    """The step that tells the user an image is not what was asked for, if any."""
    if image.fell_back:
        return "firmware_fallback"
    if image.offline:
        return "firmware_offline"
    return None
