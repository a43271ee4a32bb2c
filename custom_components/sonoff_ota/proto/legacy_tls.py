"""TLS for the fake eWeLink cloud: a self-signed certificate and a context old firmware accepts.

Facts (shared/spec/setup-mode-ota.md §9 and §13.9):
- the ESP8266 stacks of that era speak only RSA key exchange with AES-CBC-SHA(256) suites;
- some devices top out at TLS 1.1, newer ones offer TLS 1.2 (#181), so accept 1.0-1.2 and do
  not pin one version (SonOTA's TLS 1.1 pin fails on OpenSSL 3 with "no ciphers");
- Python's default cipher string excludes these suites, and OpenSSL 3 needs `@SECLEVEL=0`;
- firmware < 1.6 does not verify our certificate; firmware that pins the vendor certificate
  drops the connection right after our Certificate message (§10, §14). `TlsHandshakeObserver`
  makes that symptom visible: it counts ClientHellos and compares them with completed requests.

Everything here is synchronous on purpose: `load_cert_chain` and file writes block, so the
Home Assistant side runs these functions in the executor.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
import datetime
from pathlib import Path
import ssl
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

LEGACY_CIPHERS = "AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256:@SECLEVEL=0"
"""RSA key exchange + AES-CBC with SHA1/SHA256 MACs, at OpenSSL security level 0 (spec §9)."""

DEFAULT_COMMON_NAME = "sonoff-ota"
CERT_VALIDITY_DAYS = 36500
"""About 100 years; SonOTA's shipped certificate is valid until 2133 (spec §2)."""
RSA_KEY_BITS = 2048
CERT_FILE_NAME = "fake_cloud_cert.pem"
KEY_FILE_NAME = "fake_cloud_key.pem"


def generate_self_signed_cert(common_name: str = DEFAULT_COMMON_NAME) -> tuple[bytes, bytes]:
    """Return `(cert_pem, key_pem)`: a fresh RSA-2048 key and a SHA-256 self-signed certificate.

    The key is PKCS#8 PEM without encryption (it only protects a throw-away MITM endpoint;
    the device never checks it).
    """
    key = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=CERT_VALIDITY_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    key_pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    return cert_pem, key_pem


def ensure_cert_files(directory: Path, common_name: str = DEFAULT_COMMON_NAME) -> tuple[Path, Path]:
    """Return `(cert_path, key_path)` in `directory`, generating the pair once if missing.

    Blocking (file I/O and key generation): run it in an executor.
    """
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / CERT_FILE_NAME
    key_path = directory / KEY_FILE_NAME
    if not (cert_path.is_file() and key_path.is_file()):
        cert_pem, key_pem = generate_self_signed_cert(common_name)
        key_path.write_bytes(key_pem)
        key_path.chmod(0o600)
        cert_path.write_bytes(cert_pem)
    return cert_path, key_path


class TlsHandshakeObserver:
    """Counts ClientHellos on the legacy context and the requests that followed them.

    Python calls `SSLContext.sni_callback` for **every** ClientHello, also when the client sends
    no SNI (then `server_name` is None). Verified on Python 3.13 / OpenSSL 3.0 with clients that
    send no SNI, which is what the Sonoff does (spec §9 "expect no SNI"). The callback runs in
    the thread doing the handshake, which for asyncio servers is the event loop thread, so the
    asyncio events here may be set from it directly.

    A request handler that got a request over this context calls `note_request()` (the fake
    cloud does so). There is no production hook for failed handshakes themselves: asyncio
    reports them to the loop's exception handler only when the loop runs in debug mode, and
    otherwise drops them silently; so "hello counted, request never came" is the signal.
    Hellos but no request after a grace period is the symptom of firmware that pins the
    vendor certificate: it aborts right after our Certificate message (spec §10, #164).
    """

    def __init__(self) -> None:
        self.client_hellos = 0
        self.requests = 0
        self.server_names: list[str | None] = []
        self.hello_seen = asyncio.Event()
        self.request_seen = asyncio.Event()

    def sni_callback(
        self, ssl_object: ssl.SSLObject, server_name: str | None, context: ssl.SSLContext
    ) -> None:
        """Record one ClientHello (the `SSLContext.sni_callback` hook); never fails it."""
        self.client_hellos += 1
        self.server_names.append(server_name)
        self.hello_seen.set()

    def note_request(self) -> None:
        """Record that a complete request arrived over this TLS context."""
        self.requests += 1
        self.request_seen.set()

    @property
    def pinning_suspected(self) -> bool:
        """True when clients said hello but none ever completed a request.

        Judge it only after a grace period following the first hello: a good device sends its
        dispatch request within a second of the handshake.
        """
        return self.client_hellos > 0 and self.requests == 0

    def snapshot(self) -> TlsStats:
        """Return the counters as an immutable value (for diagnostics)."""
        return TlsStats(client_hellos=self.client_hellos, requests=self.requests)


@dataclass(frozen=True, slots=True)
class TlsStats:
    """Counters of a `TlsHandshakeObserver` at one moment."""

    client_hellos: int
    requests: int


def legacy_server_context(
    cert_path: Path | str,
    key_path: Path | str,
    observer: TlsHandshakeObserver | None = None,
) -> ssl.SSLContext:
    """Return a server context that old eWeLink firmware can complete a handshake with.

    TLS 1.0-1.2, RSA key exchange + AES-CBC-SHA/SHA256 at `@SECLEVEL=0` (spec §9 "Local test").
    Blocking (`load_cert_chain` reads files): run it in an executor.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with warnings.catch_warnings():
        # TLSVersion.TLSv1 is deprecated in Python; it is exactly what these devices need.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(LEGACY_CIPHERS)
    # No compression/renegotiation tweaks: the defaults are what the captures show working.
    context.load_cert_chain(cert_path, key_path)
    if observer is not None:
        context.sni_callback = observer.sni_callback
    return context
