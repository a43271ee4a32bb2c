"""The TLS client side of the old eWeLink ESP8266 firmware.

Facts (shared/spec/setup-mode-ota.md §9, §10, §13.9-10):
- the device offers TLS 1.0-1.2 (older units top out at TLS 1.1), only RSA key
  exchange with AES-CBC-SHA/SHA256, and sends no SNI when given an IP;
- firmware below 1.6 does not verify the server certificate;
- firmware 1.6-1.8.x, 2.6+ and 3.x pin ITEAD's certificate: the handshake ends
  right after the server's Certificate, and dispatch never happens.

The pinned variant is emulated by verifying the server against a throwaway
"vendor CA" that no test or integration ever gets to see.
"""

from __future__ import annotations

import datetime
import enum
import functools
import ssl
import warnings

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

LEGACY_CIPHERS = "AES128-SHA:AES256-SHA:AES128-SHA256:AES256-SHA256:@SECLEVEL=0"
"""The only suites the ESP8266 stacks of that era offer (§9)."""


class TlsVariant(enum.StrEnum):
    """Highest TLS version a firmware offers (§9: 'newer devices offer 1.2')."""

    TLS12 = "tls1.2"
    TLS11 = "tls1.1"


_MAX_VERSION = {
    TlsVariant.TLS12: ssl.TLSVersion.TLSv1_2,
    TlsVariant.TLS11: ssl.TLSVersion.TLSv1_1,
}


def parse_version(rom_version: str) -> tuple[int, ...]:
    """Turn "2.0.4" into (2, 0, 4); non-numeric parts count as 0."""
    parts: list[int] = []
    for part in rom_version.strip().split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    while len(parts) < 3:
        parts.append(0)
    return tuple(parts)


def firmware_pins_certificate(rom_version: str) -> bool:
    """Tell whether this eWeLink firmware pins the vendor certificate (§10).

    1.x from 1.6.0 on (reports: 1.6.0, 1.7.0, 1.8), 2.6+ and 3.x pin; 1.5.x and
    2.0.x do not.
    """
    version = parse_version(rom_version)
    if version[0] == 1:
        return version >= (1, 6, 0)
    return version >= (2, 6, 0)


def _base_context(variant: TlsVariant) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with warnings.catch_warnings():
        # TLS 1.0/1.1 are deprecated in Python; emulating them is the point.
        warnings.simplefilter("ignore", DeprecationWarning)
        context.minimum_version = ssl.TLSVersion.TLSv1
        context.maximum_version = _MAX_VERSION[variant]
    context.set_ciphers(LEGACY_CIPHERS)
    return context


def legacy_client_context(variant: TlsVariant = TlsVariant.TLS12) -> ssl.SSLContext:
    """Client context of firmware < 1.6 / 2.0.x: old suites, no verification."""
    context = _base_context(variant)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


@functools.cache
def _vendor_ca_pem() -> str:
    """A throwaway CA standing for ITEAD's; nothing ever chains to it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "virtual ITEAD vendor CA")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM).decode()


def pinned_client_context(variant: TlsVariant = TlsVariant.TLS12) -> ssl.SSLContext:
    """Client context of pinned firmware: the server's certificate never verifies.

    The handshake reaches the server's Certificate message, then the client
    aborts with an alert (unknown CA), as in §10 ("disconnected after getting
    the certificate").
    """
    context = _base_context(variant)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=_vendor_ca_pem())
    return context


def client_context_for(
    rom_version: str, variant: TlsVariant, *, refuse: bool = False
) -> ssl.SSLContext:
    """The context a firmware version uses; `refuse` forces the pinned one."""
    if refuse or firmware_pins_certificate(rom_version):
        return pinned_client_context(variant)
    return legacy_client_context(variant)
