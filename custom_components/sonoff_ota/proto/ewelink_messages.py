"""The eWeLink cloud's wire format: the upgrade offer, the messages, the fields we read.

Facts (shared/spec/setup-mode-ota.md §6.2, §6.3, §13.2-§13.5):
- dispatch: reply `{"error":0,"reason":"ok","IP":"<dotted IPv4>","port":<int>}`;
- WebSocket: every device action is answered with `{"error":0,"deviceid","apikey"}` plus
  register → `config`, date → `date` (UTC, ms, `Z`), query → `params:0`;
- `upgrade` carries both `user1.bin` and `user2.bin` (the device picks the inactive slot, §6.4)
  with lowercase sha256 digests, and `model` equal to the registered model (§6.3).

Pure data and functions: no sockets, no state. The server that speaks it is `fake_cloud`.
"""

from __future__ import annotations

from dataclasses import dataclass
import datetime
import re
from typing import Any, Final

from .image_names import USER1_NAME, USER2_NAME
from .image_server import ServedSet

DEFAULT_MODEL: Final = "ITA-GZ1-GL"
"""SonOTA's default model when register did not say (spec §6.3)."""
UPGRADE_VERSION: Final = "23.42.5"
"""`params.version`: said to have no effect, so a high value (spec §6.3)."""
HEARTBEAT_CONFIG: Final = {"hb": 1, "hbInterval": 145}
_DIGEST_RE: Final = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class UpgradeOffer:
    """The two intermediate images a device is offered (URLs plus lowercase sha256 hex)."""

    user1_url: str
    user1_digest: str
    user2_url: str
    user2_digest: str
    version: str = UPGRADE_VERSION

    def __post_init__(self) -> None:
        """Reject digests the firmware would refuse (uppercase or wrong length)."""
        for digest in (self.user1_digest, self.user2_digest):
            if not _DIGEST_RE.match(digest):
                raise ValueError("digests must be 64 lowercase hex characters")

    @classmethod
    def from_served_set(
        cls,
        served: ServedSet,
        base_url: str,
        *,
        paced: bool = False,
        user1_name: str = USER1_NAME,
        user2_name: str = USER2_NAME,
    ) -> UpgradeOffer:
        """Build the offer for a served set; `base_url` is `http://<LAN IP>:<port>` (no slash)."""
        base = base_url.rstrip("/")
        return cls(
            user1_url=base + served.url_path(user1_name, paced=paced),
            user1_digest=served.digest(user1_name),
            user2_url=base + served.url_path(user2_name, paced=paced),
            user2_digest=served.digest(user2_name),
        )

    def bin_list(self) -> list[dict[str, str]]:
        """`params.binList` as the firmware expects it (spec §6.3)."""
        return [
            {"downloadUrl": self.user1_url, "digest": self.user1_digest, "name": "user1.bin"},
            {"downloadUrl": self.user2_url, "digest": self.user2_digest, "name": "user2.bin"},
        ]


def utc_timestamp() -> str:
    """`YYYY-MM-DDTHH:MM:SS.mmmZ` in UTC (spec §6.3: SonOTA's local-time variant was wrong)."""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z"


def dispatch_reply(ip: str, port: int) -> dict[str, Any]:
    """The body of the `/dispatch/device` reply: where the device's WebSocket goes."""
    return {
        "error": 0,
        "reason": "ok",
        "IP": ip,
        "port": port,
    }


def upgrade_message(
    deviceid: str, apikey: str, sequence: str, offer: UpgradeOffer, model: str
) -> dict[str, Any]:
    """The `upgrade` action the cloud sends to offer `offer` (spec §6.3)."""
    return {
        "action": "upgrade",
        "deviceid": deviceid,
        "apikey": apikey,
        "userAgent": "app",
        "sequence": sequence,
        "ts": 0,
        "params": {"binList": offer.bin_list(), "model": model, "version": offer.version},
    }
