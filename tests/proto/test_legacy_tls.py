"""Legacy TLS: old-firmware clients complete requests; the pinned-certificate symptom is observed.

Real TLS on 127.0.0.1; the "firmware" is a Python ssl client limited to what the ESP8266 stacks
speak (spec setup-mode-ota.md §9). Nothing is mocked.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
import ssl

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
import pytest

from custom_components.sonoff_ota.proto.legacy_tls import (
    TlsHandshakeObserver,
    ensure_cert_files,
    generate_self_signed_cert,
    legacy_server_context,
)

from .legacy_clients import (
    abort_after_server_hello,
    expect_failed_handshakes,
    get_request,
    legacy_client_context,
    raw_http,
    running_site,
)


@pytest.fixture(scope="module")
def cert_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """One generated certificate for the module (built outside the event loop)."""
    return ensure_cert_files(tmp_path_factory.mktemp("tls"))


def _app(observer: TlsHandshakeObserver) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        observer.note_request()
        ssl_object = request.transport.get_extra_info("ssl_object") if request.transport else None
        assert ssl_object is not None
        return web.Response(text=f"{ssl_object.version()} {ssl_object.cipher()[0]}")

    app = web.Application()
    app.router.add_get("/hello", hello)
    return app


def test_generated_certificate_is_rsa2048_sha256_long_lived() -> None:
    cert_pem, key_pem = generate_self_signed_cert("sonoff-ota")
    cert = x509.load_pem_x509_certificate(cert_pem)
    public_key = cert.public_key()
    assert isinstance(public_key, rsa.RSAPublicKey)
    assert public_key.key_size == 2048
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days > 3650
    assert cert.subject.rfc4514_string() == "CN=sonoff-ota"
    assert b"BEGIN PRIVATE KEY" in key_pem


def test_context_range_is_tls10_to_tls12(cert_files: tuple[Path, Path]) -> None:
    context = legacy_server_context(*cert_files)
    assert context.minimum_version is ssl.TLSVersion.TLSv1
    assert context.maximum_version is ssl.TLSVersion.TLSv1_2
    names = {cipher["name"] for cipher in context.get_ciphers()}
    assert {"AES128-SHA", "AES256-SHA", "AES128-SHA256", "AES256-SHA256"} <= names


@pytest.mark.parametrize(
    ("version", "cipher", "expected"),
    [
        (ssl.TLSVersion.TLSv1_1, "AES128-SHA", "TLSv1.1 AES128-SHA"),
        (ssl.TLSVersion.TLSv1_2, "AES256-SHA", "TLSv1.2 AES256-SHA"),
        (ssl.TLSVersion.TLSv1_2, "AES128-SHA", "TLSv1.2 AES128-SHA"),
    ],
)
async def test_old_firmware_clients_complete_a_request(
    socket_enabled: None,
    cert_files: tuple[Path, Path],
    version: ssl.TLSVersion,
    cipher: str,
    expected: str,
) -> None:
    observer = TlsHandshakeObserver()
    context = legacy_server_context(*cert_files, observer=observer)
    async with running_site(_app(observer), context) as port:
        response = await raw_http(
            port,
            get_request("/hello", headers={"Host": "eu-disp.coolkit.cc"}),
            ssl_context=legacy_client_context(version, cipher),
        )
    assert response.status == 200
    assert response.body.decode() == expected
    assert observer.client_hellos == 1
    # Python calls sni_callback even without SNI (the client connects to an IP literal).
    assert observer.server_names == [None]
    assert observer.requests == 1
    assert not observer.pinning_suspected


async def test_modern_only_client_is_not_what_we_serve(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    """An ECDHE-only client finds no shared cipher: proves the cipher list is really restricted."""
    context = legacy_server_context(*cert_files)
    client = legacy_client_context(ssl.TLSVersion.TLSv1_2, "ECDHE-RSA-AES128-GCM-SHA256")
    async with expect_failed_handshakes(1), running_site(web.Application(), context) as port:
        with pytest.raises((ssl.SSLError, ConnectionError)):
            await raw_http(port, get_request("/"), ssl_context=client)


async def test_pinned_firmware_symptom_is_observed(
    socket_enabled: None, cert_files: tuple[Path, Path]
) -> None:
    """A client that drops the connection right after our Certificate (fw >= 1.6, spec §10)."""
    observer = TlsHandshakeObserver()
    context = legacy_server_context(*cert_files, observer=observer)
    client = legacy_client_context(ssl.TLSVersion.TLSv1_2, "AES128-SHA")
    async with expect_failed_handshakes(2), running_site(_app(observer), context) as port:
        received = await abort_after_server_hello(port, client)
        await asyncio.wait_for(observer.hello_seen.wait(), timeout=5)
        received_again = await abort_after_server_hello(port, client)
    # The server sent its flight including the certificate (well over a few hundred bytes).
    assert received > 500
    assert received_again > 500
    assert observer.client_hellos == 2
    assert observer.requests == 0
    assert observer.pinning_suspected
    assert observer.snapshot().client_hellos == 2
