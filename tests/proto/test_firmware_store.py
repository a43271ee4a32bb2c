"""The firmware store against a real aiohttp server on 127.0.0.1.

Nothing is mocked: the store downloads synthetic images over loopback TCP,
writes its cache under `tmp_path`, and does file I/O through
`hass.async_add_executor_job` (the `hass` fixture is used for nothing else).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
import gzip
import hashlib
import json
import mmap
from pathlib import Path

import aiohttp
from homeassistant.core import HomeAssistant
import pytest

from custom_components.sonoff_ota.proto.firmware_cache import StoredImage
from custom_components.sonoff_ota.proto.firmware_choice import FirmwareChoice, FirmwareSource
from custom_components.sonoff_ota.proto.firmware_errors import (
    FirmwareErrorCode,
    FirmwareInvalidError,
    FirmwareUnavailableError,
)
from custom_components.sonoff_ota.proto.firmware_image import ImageRole, IssueCode
from custom_components.sonoff_ota.proto.firmware_sources import (
    FirmwareSources,
    normalize_tasmota_version,
    redact_url,
)
from custom_components.sonoff_ota.proto.firmware_store import FirmwareStore
from virtual_sonoff.images import (
    FLASH_MODE_DIO,
    MAGIC_V2,
    intermediate_user1,
    intermediate_user2,
    make_image,
    tasmota_lite,
)

from .firmware_server import FirmwareServer, firmware_server

LATEST = "latest-tasmota-lite.bin"
FALLBACK = "release-9.5.0-tasmota-lite.bin"
USER1 = "image_user1-0x01000.bin"
USER2 = "image_user2-0x81000.bin"
SHORT_TIMEOUT = aiohttp.ClientTimeout(total=10, connect=2, sock_read=5)


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sources_for(server: FirmwareServer) -> FirmwareSources:
    """Every source on the local server; the intermediates pinned to the synthetic bytes."""
    return FirmwareSources(
        tasmota_latest_url=server.url(LATEST),
        tasmota_release_url_template=server.url("release-{version}-tasmota-lite.bin"),
        tasmota_fallback_version="9.5.0",
        user1_url=server.url(USER1),
        user1_sha256=sha(intermediate_user1()),
        user2_url=server.url(USER2),
        user2_sha256=sha(intermediate_user2()),
    )


@asynccontextmanager
async def store_for(
    hass: HomeAssistant, cache: Path, sources: FirmwareSources
) -> AsyncIterator[FirmwareStore]:
    async with aiohttp.ClientSession() as session:
        yield FirmwareStore(
            cache, session, hass.async_add_executor_job, sources=sources, timeout=SHORT_TIMEOUT
        )


def default_files() -> dict[str, bytes]:
    return {
        LATEST: tasmota_lite(490_000),
        FALLBACK: tasmota_lite(470_000),
        USER1: intermediate_user1(),
        USER2: intermediate_user2(),
    }


async def cache_files(hass: HomeAssistant, cache: Path) -> list[str]:
    """Every file under the cache dir (relative names), read off the loop."""

    def walk() -> list[str]:
        return sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())

    return await hass.async_add_executor_job(walk)


async def test_good_image_is_downloaded_cached_and_served(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    seen: list[tuple[int, int | None]] = []
    async with (
        firmware_server(default_files()) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        image = await store.get_tasmota(
            ImageRole.DIY, progress=lambda got, total: seen.append((got, total))
        )
        data = server.files[LATEST]
        assert image.sha256 == sha(data)
        assert image.size == 490_000
        assert image.role is ImageRole.DIY
        assert image.filename == LATEST
        assert image.source_url == server.url(LATEST)
        assert (image.from_cache, image.offline, image.fell_back) == (False, False, False)
        assert image.synthetic
        assert image.path == tmp_path / "images" / f"{image.sha256}.bin"
        assert bytes(await store.read_bytes(image)) == data
        assert seen[0] == (0, 490_000)
        assert seen[-1] == (490_000, 490_000)
        assert server.requests[LATEST] == 1

    index = json.loads(await hass.async_add_executor_job((tmp_path / "index.json").read_text))
    entry = index["entries"][server.url(LATEST)]
    assert entry["sha256"] == sha(data)
    assert (entry["size"], entry["magic"], entry["flash_mode"]) == (490_000, 0xE9, 3)
    assert entry["synthetic"] is True
    assert await cache_files(hass, tmp_path) == [f"images/{sha(data)}.bin", "index.json"]


async def test_cached_image_is_served_from_an_anonymous_mapping(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    """Every flash reads its image back from the cache into a mapping of its own.

    Half-megabyte `bytes` read per flash and freed after it fragmented glibc's heap
    (`bench.leaks`: the RSS grew by about 4 MB over 20 DIY flashes, under 2 MB with the
    mapping). A mapping is returned to the system when the last reference goes; the
    file on disk is not mapped (a file changed under a mapping would fault).
    """
    async with (
        firmware_server(default_files()) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        image = await store.get_tasmota(ImageRole.DIY)
        served = await store.read_bytes(image)
        assert isinstance(served, mmap.mmap)
        assert bytes(served) == server.files[LATEST]
        assert served[:1] == b"\xe9"  # slices are bytes, as with `bytes`
        # Changing the cache file later does not change what this flash serves.
        await hass.async_add_executor_job(image.path.write_bytes, b"\xe9" + bytes(16))
        assert bytes(served) == server.files[LATEST]


async def test_setup_images_pinned_intermediates_and_cache_first(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with (
        firmware_server(default_files()) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        user1, user2, final = await store.get_setup_images()
        assert user1.sha256 == sha(intermediate_user1())
        assert user2.sha256 == sha(intermediate_user2())
        assert user1.report.warnings == ()  # pinned: no NOT_PINNED warning
        assert final.role is ImageRole.SETUP_FINAL
        assert final.sha256 == sha(server.files[LATEST])
        # Pinned sources are immutable: the second time comes from the cache.
        again = await store.get_intermediate(ImageRole.SETUP_USER1)
        assert again.from_cache
        assert not again.offline
        assert again.sha256 == user1.sha256
        assert server.requests[USER1] == 1


@pytest.mark.parametrize(
    ("name", "data", "codes"),
    [
        pytest.param(
            "wrong-magic.bin",
            make_image(480_000, magic=MAGIC_V2),
            {IssueCode.BAD_MAGIC},
            id="wrong-magic",
        ),
        pytest.param(
            "dio.bin",
            make_image(480_000, flash_mode=FLASH_MODE_DIO),
            {IssueCode.BAD_FLASH_MODE},
            id="dio",
        ),
        pytest.param(
            "tasmota-lite.bin.gz",
            gzip.compress(tasmota_lite()),
            {IssueCode.GZIP, IssueCode.GZIP_NAME},
            id="gzip",
        ),
        pytest.param(
            "tasmota-minimal.bin", tasmota_lite(), {IssueCode.MINIMAL_BUILD}, id="minimal"
        ),
    ],
)
async def test_bad_images_from_a_url_are_refused_and_not_cached(
    *,
    hass: HomeAssistant,
    socket_enabled: None,
    tmp_path: Path,
    name: str,
    data: bytes,
    codes: set[IssueCode],
) -> None:
    async with (
        firmware_server({name: data}) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        with pytest.raises(FirmwareInvalidError) as caught:
            await store.get_url(server.url(name), ImageRole.DIY)
    assert caught.value.code is FirmwareErrorCode.INVALID_IMAGE
    assert {issue.code for issue in caught.value.issues} == codes
    assert caught.value.report is not None
    assert caught.value.report.sha256 == sha(data)
    assert server.requests[name] == 1
    assert await cache_files(hass, tmp_path) == []


async def test_oversize_for_diy_falls_back_but_fits_setup_mode(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    files = default_files()
    files[LATEST] = tasmota_lite(522_000)  # > 520192, <= 524288
    async with (
        firmware_server(files) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        diy = await store.get_tasmota(ImageRole.DIY)
        assert diy.fell_back
        assert diy.fallback_reason is FirmwareErrorCode.INVALID_IMAGE
        assert diy.sha256 == sha(files[FALLBACK])
        assert diy.source_url == server.url(FALLBACK)
        setup = await store.get_tasmota(ImageRole.SETUP_FINAL)
        assert not setup.fell_back
        assert setup.size == 522_000
        assert setup.sha256 == sha(files[LATEST])
        # A version the user picks is taken as is, or refused; never swapped.
        picked = await store.get_tasmota(ImageRole.DIY, version="v9.5.0")
        assert picked.sha256 == sha(files[FALLBACK])
        assert not picked.fell_back


async def test_no_image_fits_reports_both_reasons(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    files = {LATEST: tasmota_lite(522_000)}  # fallback missing: 404
    async with (
        firmware_server(files) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        with pytest.raises(FirmwareUnavailableError) as caught:
            await store.get_tasmota(ImageRole.DIY)
    err = caught.value
    assert err.code is FirmwareErrorCode.NO_SUITABLE_IMAGE
    assert err.params["latest_error"] == FirmwareErrorCode.INVALID_IMAGE
    assert err.params["fallback_error"] == FirmwareErrorCode.HTTP_STATUS
    assert [issue.code for issue in err.issues] == [IssueCode.TOO_LARGE]
    assert err.issues[0].params == {"size": 522_000, "limit": 520_192}


async def test_truncated_download_is_never_cached(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    files = default_files()
    async with firmware_server(files) as server:
        server.truncate.add(LATEST)
        async with store_for(hass, tmp_path, sources_for(server)) as store:
            with pytest.raises(FirmwareUnavailableError) as caught:
                await store.get_url(server.url(LATEST), ImageRole.DIY)
            assert caught.value.code is FirmwareErrorCode.TRUNCATED
            assert caught.value.params["expected"] == 490_000
            assert int(caught.value.params["received"]) < 490_000
            assert await cache_files(hass, tmp_path) == []  # no image, no temp file
            # Once the server behaves, the same store gets the whole image.
            server.truncate.clear()
            image = await store.get_url(server.url(LATEST), ImageRole.DIY)
            assert bytes(await store.read_bytes(image)) == files[LATEST]
            assert server.requests[LATEST] == 2


async def test_pinned_hash_mismatch_is_refused(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with firmware_server(default_files()) as server:
        # Same size and header, other bytes: only the pin can tell.
        server.replace[USER1] = intermediate_user2()
        async with store_for(hass, tmp_path, sources_for(server)) as store:
            with pytest.raises(FirmwareInvalidError) as caught:
                await store.get_intermediate(ImageRole.SETUP_USER1)
    assert [issue.code for issue in caught.value.issues] == [IssueCode.HASH_MISMATCH]
    assert caught.value.issues[0].params == {
        "sha256": sha(intermediate_user2()),
        "expected": sha(intermediate_user1()),
    }
    assert await cache_files(hass, tmp_path) == []


async def test_server_down_warm_cache_then_cold(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    warm = tmp_path / "warm"
    cold = tmp_path / "cold"
    files = default_files()
    async with firmware_server(files) as server:
        sources = sources_for(server)
        async with store_for(hass, warm, sources) as store:
            first = await store.get_tasmota(ImageRole.DIY)
            assert not first.from_cache
        await server.down()
        # A new store (as after an HA restart) finds the image through the index.
        async with store_for(hass, warm, sources) as store:
            cached = await store.get_tasmota(ImageRole.DIY)
            assert (cached.from_cache, cached.offline) == (True, True)
            assert cached.fetch_error is FirmwareErrorCode.UNREACHABLE
            assert not cached.fell_back
            assert cached.sha256 == first.sha256
            assert bytes(await store.read_bytes(cached)) == files[LATEST]
        async with store_for(hass, cold, sources) as store:
            with pytest.raises(FirmwareUnavailableError) as caught:
                await store.get_tasmota(ImageRole.DIY)
            assert caught.value.code is FirmwareErrorCode.UNREACHABLE_NO_CACHE
            assert caught.value.params["url"] == server.url(LATEST)
            with pytest.raises(FirmwareUnavailableError) as caught_url:
                await store.get_url(server.url(LATEST), ImageRole.SETUP_FINAL)
            assert caught_url.value.code is FirmwareErrorCode.UNREACHABLE_NO_CACHE
    assert await cache_files(hass, cold) == []


async def test_upload_bad_then_good(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with aiohttp.ClientSession() as session:
        store = FirmwareStore(tmp_path, session, hass.async_add_executor_job)
        bad = make_image(480_000, flash_mode=FLASH_MODE_DIO)
        with pytest.raises(FirmwareInvalidError) as caught:
            await store.store_upload(bad, "my-build.bin", ImageRole.DIY)
        assert caught.value.code is FirmwareErrorCode.INVALID_IMAGE
        assert caught.value.params == {"filename": "my-build.bin"}
        assert [issue.code for issue in caught.value.issues] == [IssueCode.BAD_FLASH_MODE]
        assert await cache_files(hass, tmp_path) == []

        with pytest.raises(FirmwareInvalidError) as caught:
            await store.store_upload(tasmota_lite(), "tasmota-minimal.bin", ImageRole.DIY)
        assert [issue.code for issue in caught.value.issues] == [IssueCode.MINIMAL_BUILD]

        good = tasmota_lite(508_500)
        image = await store.store_upload(good, "mine.bin", ImageRole.DIY)
        assert image.source_url is None
        assert image.report.warning_codes == (IssueCode.NEAR_DIY_LIMIT,)
        assert bytes(await store.read_bytes(image)) == good


async def test_corrupted_cache_file_is_detected(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with (
        firmware_server(default_files()) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        image = await store.get_intermediate(ImageRole.SETUP_USER2)
        await hass.async_add_executor_job(image.path.write_bytes, b"\xea" + bytes(200_000))
        with pytest.raises(FirmwareUnavailableError) as caught:
            await store.read_bytes(image)
        assert caught.value.code is FirmwareErrorCode.CACHE_CORRUPT
        # The damaged copy is dropped; the next request downloads again.
        again = await store.get_intermediate(ImageRole.SETUP_USER2)
        assert not again.from_cache
        assert bytes(await store.read_bytes(again)) == intermediate_user2()
        assert server.requests[USER2] == 2


async def test_http_errors_and_bad_urls(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with (
        firmware_server({}) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        with pytest.raises(FirmwareUnavailableError) as caught:
            await store.get_url(server.url("missing.bin"), ImageRole.DIY)
        assert caught.value.code is FirmwareErrorCode.HTTP_STATUS
        assert caught.value.params["status"] == 404
        with pytest.raises(FirmwareInvalidError) as bad:
            await store.get_url("ftp://127.0.0.1/x.bin", ImageRole.DIY)
        assert bad.value.code is FirmwareErrorCode.BAD_URL


async def test_concurrent_gets_download_once(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    progress_a: list[int] = []
    progress_b: list[int] = []
    async with firmware_server(default_files()) as server:
        server.gate = asyncio.Event()
        async with store_for(hass, tmp_path, sources_for(server)) as store:
            first = asyncio.create_task(
                store.get_tasmota(ImageRole.DIY, progress=lambda got, _t: progress_a.append(got))
            )
            second = asyncio.create_task(
                store.get_tasmota(
                    ImageRole.SETUP_FINAL, progress=lambda got, _t: progress_b.append(got)
                )
            )
            try:
                async with asyncio.timeout(5):
                    # Hold the response until both callers wait on the same flight.
                    while sum(f.waiters for f in store._downloader._flights.values()) < 2:  # noqa: ASYNC110
                        await asyncio.sleep(0.005)
                server.gate.set()
                results: list[StoredImage] = list(await asyncio.gather(first, second))
            finally:
                server.gate.set()
    assert server.requests[LATEST] == 1
    assert {image.sha256 for image in results} == {sha(server.files[LATEST])}
    assert [image.role for image in results] == [ImageRole.DIY, ImageRole.SETUP_FINAL]
    assert progress_a[-1] == progress_b[-1] == 490_000


def test_redact_url() -> None:
    assert redact_url("http://u:pw@10.0.0.2:8080/a.bin?x=1") == "http://10.0.0.2:8080/a.bin?x=1"
    assert redact_url("http://10.0.0.2/a.bin") == "http://10.0.0.2/a.bin"


async def test_url_credentials_never_reach_index_or_result(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    async with (
        firmware_server(default_files()) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        with_password = server.url(LATEST).replace("http://", "http://me:s3cr3t-pw@")
        image = await store.get_url(with_password, ImageRole.DIY)
        assert image.source_url == server.url(LATEST)
        assert "s3cr3t" not in repr(image)
    index_text = await hass.async_add_executor_job((tmp_path / "index.json").read_text)
    assert "s3cr3t" not in index_text
    assert server.url(LATEST) in index_text


async def test_offline_falls_back_to_a_cached_older_lite(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    files = default_files()
    async with (
        firmware_server(files) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        picked = await store.get_tasmota(ImageRole.DIY, version="9.5.0")
        assert not picked.from_cache
        await server.down()
        image = await store.get_tasmota(ImageRole.DIY)
    assert image.fell_back
    assert image.fallback_reason is FirmwareErrorCode.UNREACHABLE_NO_CACHE
    assert (image.from_cache, image.offline) == (True, True)
    assert image.sha256 == sha(files[FALLBACK])
    assert server.requests[LATEST] == 0


@pytest.mark.parametrize(
    ("text", "version"),
    [("14.4.1", "14.4.1"), ("v9.5.0", "9.5.0"), (" V13.0 ", "13.0"), ("15.0.1.3", "15.0.1.3")],
)
def test_release_numbers_are_normalised(text: str, version: str) -> None:
    assert normalize_tasmota_version(text) == version
    assert FirmwareChoice.for_version(text).version == version


@pytest.mark.parametrize("text", ["", "latest", "14", "14.4.1-rc1", "../14.4.1", "14.4.1/x"])
def test_anything_else_is_not_a_release_number(text: str) -> None:
    assert normalize_tasmota_version(text) is None
    with pytest.raises(ValueError, match="release number"):
        FirmwareChoice.for_version(text)


async def test_each_choice_reaches_its_own_source(
    hass: HomeAssistant, socket_enabled: None, tmp_path: Path
) -> None:
    """Latest, a release, a URL and an upload each give exactly their bytes."""
    files = default_files()
    release = tasmota_lite(460_000)
    custom = tasmota_lite(450_000)
    files["release-14.4.1-tasmota-lite.bin"] = release
    files["custom.bin"] = custom
    async with (
        firmware_server(files) as server,
        store_for(hass, tmp_path, sources_for(server)) as store,
    ):
        latest = await store.get_chosen(FirmwareChoice(), ImageRole.DIY)
        chosen = await store.get_chosen(FirmwareChoice.for_version("14.4.1"), ImageRole.DIY)
        by_url = await store.get_chosen(
            FirmwareChoice(FirmwareSource.URL, url=server.url("custom.bin")), ImageRole.DIY
        )
        uploaded = await store.store_upload(tasmota_lite(440_000), "mine.bin", ImageRole.DIY)
        upload = FirmwareChoice(FirmwareSource.UPLOAD, upload=uploaded)
        same_role = await store.get_chosen(upload, ImageRole.DIY)
        # An upload checked for DIY is checked again for setup mode's own limits.
        other_role = await store.get_chosen(upload, ImageRole.SETUP_FINAL)
        assert bytes(await store.read_bytes(latest)) == files[LATEST]
        assert bytes(await store.read_bytes(chosen)) == release
        assert bytes(await store.read_bytes(by_url)) == custom
        assert same_role is uploaded
        assert other_role.role is ImageRole.SETUP_FINAL
        assert other_role.sha256 == uploaded.sha256
        # Too big for DIY but fine for setup mode: refused when the DIY path asks.
        big = await store.store_upload(tasmota_lite(520_500), "big.bin", ImageRole.SETUP_FINAL)
        with pytest.raises(FirmwareInvalidError) as caught:
            await store.get_chosen(FirmwareChoice(FirmwareSource.UPLOAD, upload=big), ImageRole.DIY)
        assert [issue.code for issue in caught.value.issues] == [IssueCode.TOO_LARGE]
        assert server.requests["release-14.4.1-tasmota-lite.bin"] == 1
        assert FirmwareChoice(
            FirmwareSource.URL, url="http://user:pw@mirror.lan/x.bin"
        ).describe() == ("http://mirror.lan/x.bin")
