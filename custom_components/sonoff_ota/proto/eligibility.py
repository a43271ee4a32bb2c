"""Which devices can be flashed, by which path: ONE table, read by every check.

Each `Row` names a kind of device (model, hardware, eWeLink version, mode), the
path that can flash it, the verdict, and the sentence shown to the user. The
checks walk the rows of their path in order and take the first that matches:

- `check_diy`: the DIY preflight (after `/zeroconf/info`, before anything is
  sent that changes the device): the DIY confirm step of the config flow and
  every dashboard flash run it through `DiyFlasher.check()`;
- `check_setup_mode`: the setup-mode firmware gate. `GET /device` carries no
  firmware version (setup-mode-ota.md §5, §13.10 item 10), so it decides once
  the device names its `romVersion` (dispatch or register), before any upgrade
  is offered; it also judges a device met before by its record;
- `check_record`: a known device on the dashboard (which "Flash all eligible
  devices" may take, and what its entities say).

The README's "Which devices can be flashed" table is rendered from `ROWS`
(`markdown_table`, written by scripts/readme_devices.py); a test fails when the
two disagree. The sentences are the English `selector.eligibility` strings.

Facts: shared/spec/diy-ota-and-tasmota.md §1.1 (firmware generations), §1.3 (DIY
types), §2 (encrypted LAN mode, R4/BL602), §5 item 13 (preflight), §6 (failures);
shared/spec/setup-mode-ota.md §10 and §13.10 (which firmware pins the cloud
certificate), §14. No Home Assistant imports.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
import enum
import re
from typing import Final

DIY_AP_PASSWORD: Final = "12345678"
DIY_AP_SETUP_URL: Final = "http://10.10.7.1/"
MIN_DIY_FIRMWARE: Final = (3, 3, 0)
"""[TD] says >= 3.1, the v1.4 doc >= 3.3.0; the stricter one is required."""

# Only `diy_plug` is documented as an `ota_flash` target (diy §1.3).
FLASHABLE_TYPES: Final = frozenset({"diy_plug"})
# Types known from AlexxIT's devices.py (diy §1.3, §2) that are still refused.
KNOWN_OTHER_TYPES: Final = frozenset(
    {
        "plug",
        "strip",
        "enhanced_plug",
        "th_plug",
        "rf",
        "fan_light",
        "light",
        "diylight",
        "diy_light",
        "switch_radar",
        "multifun_switch",
        "meter",
    }
)
# R4 / BL602 / ESP32 generation (diy §1.1, §2 item 2): cannot run Tasmota at all.
NOT_ESP8266_MODEL_RE: Final = re.compile(r"(BL602|ESP32|^BASICR4|^MINIR4|R4M?$)")


class FlashPath(enum.StrEnum):
    """The path whose check a row answers."""

    DIY = "diy"
    SETUP_MODE = "setup_mode"


class Verdict(enum.StrEnum):
    """Whether the path can flash the device."""

    YES = "yes"
    WARN = "warn"
    """It may work: the integration says why it is unsure and tries."""
    NO = "no"


class EligibilityReason(enum.StrEnum):
    """Why the DIY path can or cannot flash a device (translation keys of refusals)."""

    OK = "ok"
    ENCRYPTED_LAN_MODE = "encrypted_lan_mode"
    CANNOT_RUN_TASMOTA = "cannot_run_tasmota"
    UNSUPPORTED_TYPE = "unsupported_type"
    UNKNOWN_TYPE = "unknown_type"
    NEEDS_EWELINK_UPDATE = "needs_ewelink_update"


class EligibilityWarning(enum.StrEnum):
    """Flashing may go ahead, but the user should know this."""

    UNVERIFIED_FIRMWARE = "unverified_firmware"
    FIRMWARE_UNKNOWN = "firmware_unknown"


class SetupModeVerdict(enum.StrEnum):
    """The setup-mode firmware gate (also the tracker's `firmware_verdict` detail)."""

    WORKS = "works"
    PINNED = "pinned"
    """The firmware pins the vendor certificate: refused (translation `certificate_pinned`)."""
    OLD = "old"
    """Older than 1.5: may need an eWeLink update or the paced retry."""
    UNKNOWN = "unknown"


class TypeClass(enum.Enum):
    """How a DIY `type` from mDNS is classed (diy §1.3)."""

    ANY = "any"
    FLASHABLE = "flashable"
    OTHER_KNOWN = "other_known"
    UNKNOWN = "unknown"


def classify_type(device_type: str | None) -> TypeClass:
    """`diy_plug` is flashable; other known types are refused; the rest is unknown."""
    dtype = (device_type or "").strip().lower()
    if dtype in FLASHABLE_TYPES:
        return TypeClass.FLASHABLE
    if dtype in KNOWN_OTHER_TYPES:
        return TypeClass.OTHER_KNOWN
    return TypeClass.UNKNOWN


type Version = tuple[int, int]
type VersionRange = tuple[Version, Version | None]
"""[from, below): major.minor, `below` None = no upper bound."""


ELIGIBILITY_SELECTOR: Final = "eligibility"
"""The rows' sentences are `selector.eligibility.options.<row key>` in strings.json."""


@dataclass(frozen=True, slots=True)
class Row:
    """One kind of device: what it is, which path flashes it, and what the user is told."""

    key: str
    """Stable id; the sentence is `selector.eligibility.options.<key>` in strings.json."""
    path: FlashPath
    firmware: str
    """The eWeLink versions, as the README shows them."""
    hardware: str
    """Models or hardware, as the README shows them."""
    verdict: Verdict
    sentence: str
    """Shown to the user (English; translated in strings.json)."""
    flashed_by: str
    """The README's "path" column: what can flash such a device (or "—")."""
    # -- conditions (all that are set must hold) --
    model_re: re.Pattern[str] | None = None
    """Matched (search) against the upper-cased eWeLink model when one is known."""
    fw: tuple[VersionRange, ...] = ()
    """Any of these ranges (major.minor); empty = any version, known or not."""
    fw_missing: bool | None = None
    """True: only when the version is unknown; False: only when known."""
    encrypted: bool | None = None
    types: TypeClass = TypeClass.ANY
    # -- results --
    reason: str = EligibilityReason.OK
    """DIY: the `EligibilityReason`; setup mode: the `SetupModeVerdict`."""
    warning: EligibilityWarning | None = None

    def matches(self, facts: DeviceFacts) -> bool:
        """True when every condition of the row holds for `facts`."""
        if self.model_re is not None and not (
            facts.model and self.model_re.search(facts.model.strip().upper())
        ):
            return False
        if self.fw_missing is not None and (facts.version is None) is not self.fw_missing:
            return False
        if self.fw and not (facts.version is not None and _in_ranges(facts.version, self.fw)):
            return False
        if self.encrypted is not None and facts.encrypted is not self.encrypted:
            return False
        return self.types is TypeClass.ANY or classify_type(facts.device_type) is self.types


def _in_ranges(version: Version, ranges: Iterable[VersionRange]) -> bool:
    return any(low <= version and (high is None or version < high) for low, high in ranges)


@dataclass(frozen=True, slots=True)
class DeviceFacts:
    """What is known about a device when a check runs."""

    path: FlashPath
    version: Version | None
    fw_version: str | None
    device_type: str | None = None
    model: str | None = None
    encrypted: bool = False


_DIY = FlashPath.DIY
_SETUP = FlashPath.SETUP_MODE
_NO_PATH = "—"

ROWS: Final[tuple[Row, ...]] = (
    # ---- DIY mode (eWeLink on the LAN): diy-ota-and-tasmota.md §1.1, §1.3, §2, §5 item 13
    Row(
        key="diy_new_hardware",
        path=_DIY,
        firmware="any",
        hardware="R4 / BL602 / ESP32 models (BASICR4, MINIR4, CK-BL602-…)",
        verdict=Verdict.NO,
        sentence="This newer hardware (R4, BL602 or ESP32) cannot run Tasmota at all.",
        flashed_by=_NO_PATH,
        model_re=NOT_ESP8266_MODEL_RE,
        reason=EligibilityReason.CANNOT_RUN_TASMOTA,
    ),
    Row(
        key="diy_firmware_1x",
        path=_DIY,
        firmware="1.x on the network",
        hardware="the R4 / BL602 / ESP32 generation",
        verdict=Verdict.NO,
        sentence=(
            "eWeLink 1.x on the network means R4, BL602 or ESP32 hardware, which cannot run "
            "Tasmota."
        ),
        flashed_by=_NO_PATH,
        fw=(((1, 0), (2, 0)),),
        reason=EligibilityReason.CANNOT_RUN_TASMOTA,
    ),
    Row(
        key="diy_encrypted",
        path=_DIY,
        firmware="3.x",
        hardware="paired with the eWeLink app (encrypted LAN mode)",
        verdict=Verdict.NO,
        sentence=(
            "Encrypted LAN mode cannot be flashed: switch the device to DIY mode first "
            "(hold its button 5 s, then 5 s more, join its ITEAD-… network with password 12345678 "
            "and enter your Wi-Fi at 10.10.7.1)."
        ),
        flashed_by="DIY mode, once switched",
        encrypted=True,
        reason=EligibilityReason.ENCRYPTED_LAN_MODE,
    ),
    Row(
        key="diy_unknown_type",
        path=_DIY,
        firmware="3.x",
        hardware="an eWeLink type nobody documented",
        verdict=Verdict.NO,
        sentence="Unknown eWeLink device type: it is not flashed.",
        flashed_by=_NO_PATH,
        types=TypeClass.UNKNOWN,
        reason=EligibilityReason.UNKNOWN_TYPE,
    ),
    Row(
        key="diy_other_type",
        path=_DIY,
        firmware="3.x",
        hardware="other DIY types (strip, th_plug, rf, fan_light, POWR2, …)",
        verdict=Verdict.NO,
        sentence="Only diy_plug devices are documented to accept a DIY firmware update.",
        flashed_by=_NO_PATH,
        types=TypeClass.OTHER_KNOWN,
        reason=EligibilityReason.UNSUPPORTED_TYPE,
    ),
    Row(
        key="diy_firmware_unreported",
        path=_DIY,
        firmware="3.3-3.4 (the version is not reported)",
        hardware="`diy_plug`: Basic R3, RF R3, Mini",
        verdict=Verdict.WARN,
        sentence="This firmware does not report its version (DIY v1.4): the integration tries.",
        flashed_by="**DIY mode**",
        fw_missing=True,
        types=TypeClass.FLASHABLE,
        warning=EligibilityWarning.FIRMWARE_UNKNOWN,
    ),
    Row(
        key="diy_needs_update",
        path=_DIY,
        firmware="below 3.3",
        hardware="`diy_plug`",
        verdict=Verdict.NO,
        sentence="This eWeLink version has no DIY flashing: update it to 3.3.0 or newer first.",
        flashed_by="DIY mode, after an eWeLink update",
        fw=(((0, 0), (3, 3)),),
        types=TypeClass.FLASHABLE,
        reason=EligibilityReason.NEEDS_EWELINK_UPDATE,
    ),
    Row(
        key="diy_verified",
        path=_DIY,
        firmware="3.3-3.7",
        hardware="`diy_plug`: Basic R3, RF R3, Mini R1/R2",
        verdict=Verdict.YES,
        sentence="DIY mode can flash this device.",
        flashed_by="**DIY mode**",
        fw=(((3, 3), (3, 8)),),
        types=TypeClass.FLASHABLE,
    ),
    Row(
        key="diy_unverified",
        path=_DIY,
        firmware="3.8 and newer",
        hardware="`diy_plug`",
        verdict=Verdict.WARN,
        sentence=(
            "Nobody has reported flashing this eWeLink version yet (unverified): the "
            "integration warns and tries."
        ),
        flashed_by="DIY mode",
        fw=(((3, 8), None),),
        types=TypeClass.FLASHABLE,
        warning=EligibilityWarning.UNVERIFIED_FIRMWARE,
    ),
    # ---- setup mode (the ITEAD access point, SonOTA): setup-mode-ota.md §10, §13.10, §14
    Row(
        key="setup_works",
        path=_SETUP,
        firmware="1.5.x, 2.0.x",
        hardware="ESP8266 Sonoffs (Basic, Dual, 4CH, POW, TH10/16, S20, T1, …)",
        verdict=Verdict.YES,
        sentence="Setup mode can flash this device.",
        flashed_by="**setup mode** (the SonOTA method)",
        fw=(((1, 5), (1, 6)), ((2, 0), (2, 1))),
        reason=SetupModeVerdict.WORKS,
    ),
    Row(
        key="setup_pinned",
        path=_SETUP,
        firmware="1.6-1.8.x, 2.6 and newer, 3.x",
        hardware="any",
        verdict=Verdict.NO,
        sentence=(
            "This firmware only trusts ITEAD's certificate, so setup mode cannot flash it; "
            "on eWeLink 3.3 to 3.7 use DIY mode."
        ),
        flashed_by="DIY mode for 3.3-3.7, otherwise —",
        fw=(((1, 6), (1, 9)), ((2, 6), (3, 0)), ((3, 0), None)),
        reason=SetupModeVerdict.PINNED,
    ),
    Row(
        key="setup_old",
        path=_SETUP,
        firmware="1.0-1.4 (e.g. 1.3.0)",
        hardware="ESP8266 Sonoffs",
        verdict=Verdict.WARN,
        sentence=(
            "Old firmware may reject the first download: the integration retries it slowly "
            "by itself; updating to 1.5.5 with the eWeLink app also helps."
        ),
        flashed_by="**setup mode**",
        fw=(((1, 0), (1, 5)),),
        reason=SetupModeVerdict.OLD,
    ),
    Row(
        key="setup_unknown",
        path=_SETUP,
        firmware="anything else (2.1-2.5, 1.9, not reported)",
        hardware="any",
        verdict=Verdict.WARN,
        sentence="Nobody has reported on this firmware in setup mode: the integration tries.",
        flashed_by="setup mode",
        reason=SetupModeVerdict.UNKNOWN,
    ),
)


@dataclass(frozen=True, slots=True)
class Decision:
    """The row that decided, and the placeholders for its translated message."""

    row: Row
    placeholders: dict[str, str] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        """False when the path must not try."""
        return self.row.verdict is not Verdict.NO

    @property
    def reason(self) -> str:
        """The row's reason (a translation key when refused)."""
        return self.row.reason


def decide(facts: DeviceFacts) -> Row:
    """The first row of `facts.path` that matches (every path ends in a catch-all)."""
    for row in ROWS:
        if row.path is facts.path and row.matches(facts):
            return row
    raise LookupError(f"no eligibility row for {facts}")  # a hole in ROWS: a bug


def diy_version(fw_version: str | None) -> tuple[int, ...] | None:
    """DIY `fwVersion` `"3.6.0"` as (3, 6, 0); None when absent or not numeric."""
    if not fw_version:
        return None
    parts = re.findall(r"\d+", fw_version.split("-")[0])
    return tuple(int(p) for p in parts) if parts else None


_ROM_VERSION_RE: Final = re.compile(r"^(\d+)\.(\d+)")


def rom_version(text: str | None) -> Version | None:
    """Setup-mode `romVersion` `"2.0.4"` as (2, 0); None when absent or odd."""
    match = _ROM_VERSION_RE.match(text.strip()) if text else None
    return (int(match.group(1)), int(match.group(2))) if match else None


def _major_minor(parts: tuple[int, ...] | None) -> Version | None:
    if parts is None:
        return None
    return (parts[0], parts[1] if len(parts) > 1 else 0)


def diy_mode_placeholders(deviceid: str | None) -> dict[str, str]:
    """How to enter DIY mode (diy §1.2: 5 s + 5 s, ITEAD-<id>, Wi-Fi at 10.10.7.1)."""
    return {
        "ap_ssid": f"ITEAD-{deviceid}" if deviceid else "ITEAD-<deviceid>",
        "ap_password": DIY_AP_PASSWORD,
        "setup_url": DIY_AP_SETUP_URL,
    }


def check_diy(
    *,
    device_type: str | None,
    fw_version: str | None,
    encrypted: bool,
    model: str | None = None,
    deviceid: str | None = None,
) -> Decision:
    """Decide, before anything is sent, whether the DIY path may flash this device.

    Hardware that cannot run Tasmota is reported before the "switch to DIY mode"
    advice, which would be pointless for it (the order of `ROWS`).
    """
    dtype = (device_type or "").strip().lower() or None
    row = decide(
        DeviceFacts(
            path=FlashPath.DIY,
            version=_major_minor(diy_version(fw_version)),
            fw_version=fw_version,
            device_type=dtype,
            model=model,
            encrypted=encrypted,
        )
    )
    shown_fw = fw_version or "?"
    placeholders: dict[str, str]
    match row.reason:
        case EligibilityReason.CANNOT_RUN_TASMOTA:
            shown_model = model if row.model_re is not None else (model or dtype or "?")
            placeholders = {"model": shown_model or "?", "fw_version": shown_fw}
        case EligibilityReason.ENCRYPTED_LAN_MODE:
            placeholders = diy_mode_placeholders(deviceid)
        case EligibilityReason.UNKNOWN_TYPE | EligibilityReason.UNSUPPORTED_TYPE:
            placeholders = {"device_type": dtype or "?"}
        case EligibilityReason.NEEDS_EWELINK_UPDATE:
            placeholders = {
                "fw_version": shown_fw,
                "min_version": ".".join(map(str, MIN_DIY_FIRMWARE)),
            }
        case _:
            placeholders = {"fw_version": shown_fw}
    return Decision(row, placeholders)


def check_setup_mode(rom: str | None) -> Decision:
    """The setup-mode firmware gate for an eWeLink `romVersion` (setup-mode §10, §13.10)."""
    row = decide(DeviceFacts(path=FlashPath.SETUP_MODE, version=rom_version(rom), fw_version=rom))
    return Decision(row, {"rom_version": rom or "?"})


def check_record(
    path: str,
    *,
    device_type: str | None,
    fw_version: str | None,
    model: str | None = None,
    deviceid: str | None = None,
) -> Decision:
    """A device met before, judged by what its record holds (the dashboard's view)."""
    if path == FlashPath.SETUP_MODE:
        return check_setup_mode(fw_version)
    return check_diy(
        device_type=device_type or "diy_plug",
        fw_version=fw_version,
        encrypted=False,
        model=model,
        deviceid=deviceid,
    )


# -- the README table ------------------------------------------------------------------------

README_START: Final = "<!-- eligibility-table:start (generated by scripts/readme_devices.py) -->"
README_END: Final = "<!-- eligibility-table:end -->"
_PATH_LABELS: Final = {
    FlashPath.DIY: "DIY mode (on your network)",
    FlashPath.SETUP_MODE: "setup mode",
}
_VERDICT_LABELS: Final = {Verdict.YES: "**yes**", Verdict.WARN: "tries", Verdict.NO: "**no**"}


def markdown_table(rows: Iterable[Row] = ROWS) -> str:
    """The README's "Which devices can be flashed" table, one line per row."""

    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    lines = [
        "| checked as | eWeLink firmware | model / hardware | flashable? | flashed by | "
        "what the integration says |",
        "|---|---|---|---|---|---|",
    ]
    lines.extend(
        "| "
        + " | ".join(
            cell(part)
            for part in (
                _PATH_LABELS[row.path],
                row.firmware,
                row.hardware,
                _VERDICT_LABELS[row.verdict],
                row.flashed_by,
                row.sentence,
            )
        )
        + " |"
        for row in rows
    )
    return "\n".join(lines)


def replace_readme_table(readme: str) -> str:
    """`readme` with the text between the markers replaced by `markdown_table()`."""
    start = readme.index(README_START) + len(README_START)
    end = readme.index(README_END, start)
    return f"{readme[:start]}\n{markdown_table()}\n{readme[end:]}"


def readme_table(readme: str) -> str:
    """The table currently between the markers of `readme`."""
    start = readme.index(README_START) + len(README_START)
    return readme[start : readme.index(README_END, start)].strip()
