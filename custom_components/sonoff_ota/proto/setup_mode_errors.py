"""Why a setup-mode flash stopped: the errors the flasher and its Wi-Fi hops raise.

Both `setup_mode_flasher` and `setup_mode_wifi` raise these, and the config flow turns
`code` into an abort reason, so they live apart from either. No Home Assistant imports.
"""

from __future__ import annotations

from .flash_stages import Stage


class SetupModeError(Exception):
    """A setup-mode flash cannot go on; `code` is a translation key."""

    def __init__(self, code: str, **placeholders: str) -> None:
        super().__init__(code)
        self.code = code
        self.placeholders = placeholders


class StageTimeoutError(SetupModeError):
    """A waiting stage ran out of time; the stage can be retried."""

    def __init__(self, stage: Stage) -> None:
        super().__init__(f"timeout_{stage}", stage=str(stage))
        self.stage = stage
