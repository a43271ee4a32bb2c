"""The file names the devices fetch, fixed by their firmware or by our URLs.

The intermediate image hard-codes the setup-mode names (spec setup-mode-ota.md §2, §7);
the DIY `downloadUrl` ends in ours. The flashers serve under them and the flash journal
names what was already served by them.
"""

from __future__ import annotations

from typing import Final

USER1_NAME: Final = "image_user1-0x01000.bin"
USER2_NAME: Final = "image_user2-0x81000.bin"
FINAL_NAME: Final = "image_arduino.bin"
"""The names the intermediate image hard-codes (spec §2, §7)."""

DIY_NAME: Final = "tasmota-lite.bin"
"""The last part of the DIY `downloadUrl`."""
