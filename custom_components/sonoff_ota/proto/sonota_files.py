"""SonOTA's files at the pinned commit: their names and sha256, the only hashes known offline.

`firmware_image.KNOWN_IMAGES` describes the three images (roles, sizes); `firmware_sources`
fetches the two intermediate ones from this commit and pins them. Constants only, so that the
sources (and the settings that name their fields) load without the image checks.
"""

from __future__ import annotations

from typing import Final

SONOTA_COMMIT: Final = "40dba7c099c419bf1edfbfd19dfa87036698dc36"

SONOTA_USER1_SHA256: Final = "64b374598d11f91a453adc6d95ebcbcced347fbc9abad9b62ad5b710a965a309"
SONOTA_USER2_SHA256: Final = "fec3fc4f70cf1a95cdc28811f57e53612908c62c8963e1b78a66d3edb19addda"
SONOTA_ARDUINO_SHA256: Final = "0bb8c95ce50dccb63dadd2f76cb49b0824348e7f1a5e8a31ae9199299ef03583"
