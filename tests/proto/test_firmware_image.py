"""Image validation: roles, limits, codes and parameters (pure functions, no I/O)."""

from __future__ import annotations

import gzip
import hashlib

import pytest

from custom_components.sonoff_ota.proto.firmware_image import (
    DIY_MAX_BYTES,
    DIY_WARN_BYTES,
    KNOWN_IMAGES,
    SETUP_FINAL_MAX_BYTES,
    SYNTHETIC_MARKER,
    ImageRole,
    IssueCode,
    KnownImage,
    is_synthetic,
    name_from_url,
    validate_image,
)
from virtual_sonoff import images
from virtual_sonoff.images import (
    FLASH_MODE_DIO,
    MAGIC_V2,
    intermediate_user1,
    intermediate_user2,
    make_image,
    tasmota_lite,
)


def test_marker_matches_virtual_sonoff() -> None:
    assert SYNTHETIC_MARKER == images.SYNTHETIC_MARKER


def test_good_lite_image_for_both_paths() -> None:
    data = tasmota_lite()
    for role in (ImageRole.DIY, ImageRole.SETUP_FINAL):
        report = validate_image(data, role, filename="tasmota-lite.bin")
        assert report.ok, report.errors
        assert report.warnings == ()
        assert report.sha256 == hashlib.sha256(data).hexdigest()
        assert report.sha256 == report.sha256.lower()
        assert report.size == 480_000
        assert report.magic == 0xE9
        assert report.flash_mode == 3
        assert report.flash_mode_name == "DOUT"
        assert report.synthetic is True
        assert report.known is None


def test_intermediates_need_v2_magic_and_warn_when_unpinned() -> None:
    report = validate_image(intermediate_user1(), ImageRole.SETUP_USER1)
    assert report.ok
    assert report.warning_codes == (IssueCode.NOT_PINNED,)
    report = validate_image(
        intermediate_user2(),
        ImageRole.SETUP_USER2,
        expected_sha256=hashlib.sha256(intermediate_user2()).hexdigest().upper(),
    )
    assert report.ok
    assert report.warnings == ()
    # A Tasmota image offered as an intermediate: wrong magic.
    report = validate_image(tasmota_lite(), ImageRole.SETUP_USER1)
    assert report.error_codes == (IssueCode.BAD_MAGIC,)
    assert report.errors[0].params == {"found": "0xE9", "expected": "0xEA"}


def test_wrong_magic() -> None:
    report = validate_image(make_image(480_000, magic=MAGIC_V2), ImageRole.DIY)
    assert not report.ok
    assert report.error_codes == (IssueCode.BAD_MAGIC,)
    assert report.errors[0].params == {"found": "0xEA", "expected": "0xE9"}


def test_dio_instead_of_dout() -> None:
    data = make_image(480_000, flash_mode=FLASH_MODE_DIO)
    for role in (ImageRole.DIY, ImageRole.SETUP_FINAL):
        report = validate_image(data, role)
        assert report.error_codes == (IssueCode.BAD_FLASH_MODE,)
        assert report.errors[0].params == {
            "found": 2,
            "found_name": "DIO",
            "expected": 3,
            "expected_name": "DOUT",
        }
        assert report.flash_mode_name == "DIO"


def test_oversize_for_diy_but_fine_for_setup_mode() -> None:
    data = tasmota_lite(DIY_MAX_BYTES + 1)
    diy = validate_image(data, ImageRole.DIY)
    assert diy.error_codes == (IssueCode.TOO_LARGE,)
    assert diy.errors[0].params == {"size": 520_193, "limit": 520_192}
    assert validate_image(data, ImageRole.SETUP_FINAL).ok


def test_size_edges() -> None:
    assert validate_image(tasmota_lite(DIY_MAX_BYTES), ImageRole.DIY).ok
    assert validate_image(tasmota_lite(SETUP_FINAL_MAX_BYTES), ImageRole.SETUP_FINAL).ok
    over = validate_image(tasmota_lite(SETUP_FINAL_MAX_BYTES + 1), ImageRole.SETUP_FINAL)
    assert over.errors[0].params == {"size": 524_289, "limit": 524_288}
    # ITEAD's tool refuses >= 508000: warn, do not fail.
    assert validate_image(tasmota_lite(DIY_WARN_BYTES - 1), ImageRole.DIY).warnings == ()
    near = validate_image(tasmota_lite(DIY_WARN_BYTES), ImageRole.DIY)
    assert near.ok
    assert near.warning_codes == (IssueCode.NEAR_DIY_LIMIT,)
    assert near.warnings[0].params == {"size": 508_000, "warn_at": 508_000, "limit": 520_192}
    # Setup mode has no such warning.
    assert validate_image(tasmota_lite(DIY_WARN_BYTES), ImageRole.SETUP_FINAL).warnings == ()


def test_too_small_and_empty() -> None:
    small = validate_image(make_image(4096), ImageRole.SETUP_FINAL)
    assert small.error_codes == (IssueCode.TOO_SMALL,)
    assert small.errors[0].params == {"size": 4096, "minimum": 100_000}
    empty = validate_image(b"", ImageRole.DIY)
    assert empty.error_codes == (IssueCode.EMPTY,)
    assert empty.magic is None
    assert empty.flash_mode is None


def test_gzip_content_and_name() -> None:
    packed = gzip.compress(tasmota_lite())
    report = validate_image(packed, ImageRole.DIY, filename="tasmota-lite.bin.gz")
    assert set(report.error_codes) == {IssueCode.GZIP, IssueCode.GZIP_NAME}
    assert IssueCode.BAD_MAGIC not in report.error_codes  # the specific code only
    # A raw image with a .gz name is still refused (it would be served as gz).
    named = validate_image(tasmota_lite(), ImageRole.DIY, filename="TASMOTA.BIN.GZ")
    assert named.error_codes == (IssueCode.GZIP_NAME,)
    assert named.errors[0].params == {"filename": "TASMOTA.BIN.GZ"}


def test_minimal_name() -> None:
    report = validate_image(tasmota_lite(), ImageRole.SETUP_FINAL, filename="tasmota-minimal.bin")
    assert report.error_codes == (IssueCode.MINIMAL_BUILD,)
    assert report.errors[0].params == {"filename": "tasmota-minimal.bin"}


def test_hash_mismatch_against_pin() -> None:
    data = tasmota_lite()
    wrong = "00" * 32
    report = validate_image(data, ImageRole.DIY, expected_sha256=wrong)
    assert report.error_codes == (IssueCode.HASH_MISMATCH,)
    assert report.errors[0].params == {
        "sha256": hashlib.sha256(data).hexdigest(),
        "expected": wrong,
    }


def test_known_image_in_the_wrong_slot() -> None:
    user2 = intermediate_user2()
    table = (
        KnownImage(
            name="user2",
            roles=frozenset({ImageRole.SETUP_USER2}),
            size=len(user2),
            sha256=hashlib.sha256(user2).hexdigest(),
            description="test pin",
        ),
    )
    right = validate_image(user2, ImageRole.SETUP_USER2, known_images=table)
    assert right.ok
    assert right.known is table[0]
    assert right.warnings == ()
    wrong = validate_image(user2, ImageRole.SETUP_USER1, known_images=table)
    assert wrong.error_codes == (IssueCode.KNOWN_OTHER_ROLE,)
    assert wrong.errors[0].params == {"name": "user2", "role": "setup_user1"}


def test_sonota_pins_are_the_spec_values() -> None:
    by_name = {known.name: known for known in KNOWN_IMAGES}
    assert by_name["image_user1-0x01000.bin"].sha256.startswith("64b37459")
    assert by_name["image_user2-0x81000.bin"].sha256.endswith("ddda")
    assert by_name["image_arduino.bin"].size == 482_432
    assert all(len(k.sha256) == 64 and k.sha256 == k.sha256.lower() for k in KNOWN_IMAGES)


def test_synthetic_detection() -> None:
    assert is_synthetic(tasmota_lite())
    real_looking = bytes([0xE9, 0x01, 0x03, 0x20]) + bytes(200_000)
    assert not is_synthetic(real_looking)
    report = validate_image(real_looking, ImageRole.DIY)
    assert report.ok
    assert report.synthetic is False


@pytest.mark.parametrize(
    ("url", "name"),
    [
        ("http://ota.tasmota.com/tasmota/release/tasmota-lite.bin", "tasmota-lite.bin"),
        ("http://h/x/tasmota-minimal.bin?x=1#f", "tasmota-minimal.bin"),
        ("http://h/a%20b.bin.gz", "a b.bin.gz"),
    ],
)
def test_name_from_url(url: str, name: str) -> None:
    assert name_from_url(url) == name
