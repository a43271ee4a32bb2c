"""Hypothesis strategies for everything a device (or something pretending to be one) can send us.

Shared by the seeded tests in tests/fuzz/ and by bench/fuzz.py. Two families:

- what devices send to our servers: request bodies (`hostile_body`), WebSocket frame
  sequences (`ws_script`), Range headers (`range_header`), request targets (`request_path`),
  HTTP methods (`http_method`), truncated TLS client flights (`tls_opening`);
- what devices answer our clients: raw HTTP replies (`device_reply`, rendered byte for byte by
  `DeviceReply.render`), mDNS TXT records (`txt_record`) and Tasmota discovery messages
  (`discovery_message`).

Pathological JSON is generated on purpose: nesting deeper than Python's recursion limit
(`json.loads` raises RecursionError, which is not a ValueError), integers longer than
`sys.get_int_max_str_digits()` (a plain ValueError, not a JSONDecodeError), lone surrogates,
and numbers spelled as strings that pass `str.isdigit` but not `int()` ("²", "--1").
"""

from __future__ import annotations

from dataclasses import dataclass, field
import json
import string
from typing import Final, Literal

from hypothesis import strategies as st

DEVICEID: Final = "1000e4c17c"
"""The device being flashed in the fuzz tests (other deviceids must get nothing)."""
OTHER_DEVICEIDS: Final = ("1000aaaaaa", "1000E4C17D", "", "1000e4c17c\n", "1000e4c17c ")

# -- JSON ------------------------------------------------------------------------------------

TRICKY_NUMBERS: Final = (
    "0",
    "404",
    "-0",
    "+5",
    "--1",
    "-",
    "",
    " 7 ",
    "1_000",
    "0x10",
    "1e3",
    "²",
    "٣",
    "\u0663\u0660\u0664",
    "9" * 5000,
    "NaN",
)
"""Strings a lenient "is it a number" check may accept and `int()` may not (or vice versa)."""

json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(),
    st.text(max_size=20),
    st.sampled_from(TRICKY_NUMBERS),
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
"""Any JSON value (NaN and infinities included: Python's json reads and writes them)."""


def _dumps(value: object) -> bytes:
    return json.dumps(value, allow_nan=True).encode()


@st.composite
def pathological_json(draw: st.DrawFn) -> bytes:
    """JSON-looking bodies that break naive decoders (depth, huge numbers, surrogates, size)."""
    kind = draw(
        st.sampled_from(
            ("deep_list", "deep_object", "huge_int", "huge_string", "surrogate", "truncated")
        )
    )
    if kind == "deep_list":
        depth = draw(st.integers(500, 5_000) | st.integers(10_000, 60_000))
        return b"[" * depth + b"]" * draw(st.sampled_from((0, depth)))
    if kind == "deep_object":
        depth = draw(st.integers(500, 5_000) | st.integers(10_000, 30_000))
        return b'{"a":' * depth + b"1" + b"}" * depth
    if kind == "huge_int":
        digits = draw(st.integers(4_301, 20_000))
        key = draw(st.sampled_from(("error", "deviceid", "seq", "sequence", "x")))
        return b'{"' + key.encode() + b'":' + b"7" * digits + b"}"
    if kind == "huge_string":
        size = draw(st.integers(10_000, 200_000))
        return b'{"deviceid":"' + b"a" * size + b'"}'
    if kind == "surrogate":
        key = draw(st.sampled_from(("deviceid", "model", "romVersion", "action", "error")))
        return b'{"' + key.encode() + b'":"\\ud800\\udfff\\udc00"}'
    body = _dumps(draw(json_values))
    return body[: draw(st.integers(0, max(len(body) - 1, 0)))]


HTML_PAGES: Final = (
    b"<!DOCTYPE html><html><body><h1>404 Not Found</h1></body></html>",
    b"<html><head><title>Login</title></head><body>Captive portal</body></html>",
    b'\xef\xbb\xbf{"error":0}',  # a UTF-8 BOM before valid JSON
)


def json_object(known: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[bytes]:
    """A JSON object with any subset of `known` fields (each may take any type) plus extras."""
    fields = {name: strategy | json_values for name, strategy in known.items()}
    return st.builds(
        lambda chosen, extra: _dumps({**extra, **chosen}),
        st.fixed_dictionaries({}, optional=fields),
        st.dictionaries(st.text(max_size=8), json_values, max_size=3),
    )


def hostile_body(known: dict[str, st.SearchStrategy[object]]) -> st.SearchStrategy[bytes]:
    """Any request/reply body: empty, binary, text, any JSON, objects with `known` fields."""
    return st.one_of(
        st.just(b""),
        st.binary(max_size=256),
        st.text(max_size=100).map(lambda text: text.encode("utf-8", "surrogatepass")),
        json_values.map(_dumps),
        json_object(known),
        json_object(known),
        pathological_json(),
        st.sampled_from(HTML_PAGES),
    )


# -- fake cloud ------------------------------------------------------------------------------

deviceids = st.sampled_from((DEVICEID, *OTHER_DEVICEIDS)) | json_values
dispatch_body = hostile_body(
    {
        "deviceid": deviceids,
        "model": st.sampled_from(("ITA-GZ1-GL", "PSF-B01-GL", "")),
        "romVersion": st.sampled_from(("1.5.5", "2.6.0", "")),
        "accept": st.just("ws"),
        "apikey": st.uuids().map(str),
    }
)
"""`POST /dispatch/device` bodies."""

ota_result_body = hostile_body(
    {
        "error": st.sampled_from(TRICKY_NUMBERS) | st.integers(),
        "deviceid": deviceids,
    }
)
"""`POST /api/device/otaFlash` bodies (the DIY device's flash report)."""

WsOpcode = Literal[0, 1, 2, 3, 8, 9, 10, 11, 15]


@dataclass(frozen=True, slots=True)
class WsFrame:
    """One WebSocket frame as the device would write it (masked, like any client)."""

    opcode: int
    payload: bytes = b""
    fin: bool = True
    repeat: int = 1
    """Send it this many times in a row (floods)."""


ws_action = st.builds(
    _dumps,
    st.fixed_dictionaries(
        {
            "action": st.sampled_from(("register", "update", "query", "date", "upgrade"))
            | json_values
        },
        optional={
            "deviceid": deviceids,
            "apikey": st.uuids().map(str) | json_values,
            "sequence": st.sampled_from(TRICKY_NUMBERS) | json_values,
            "model": json_values,
            "romVersion": json_values,
            "params": json_values,
            "userAgent": st.just("device") | json_values,
        },
    ),
)
ws_ack = st.builds(
    _dumps,
    st.fixed_dictionaries(
        {
            "sequence": st.sampled_from(TRICKY_NUMBERS) | json_values,
            "error": st.sampled_from(TRICKY_NUMBERS) | json_values,
        },
        optional={"deviceid": deviceids, "apikey": json_values},
    ),
)
ws_text = st.one_of(
    ws_action,
    ws_ack,
    st.text(max_size=200).map(lambda text: text.encode("utf-8", "surrogatepass")),
    pathological_json(),
    json_values.map(_dumps),
)
ws_frame = st.one_of(
    st.builds(WsFrame, st.just(1), ws_text),
    st.builds(WsFrame, st.just(2), st.binary(max_size=512)),
    st.builds(WsFrame, st.just(9), st.binary(max_size=125)),  # ping
    st.builds(WsFrame, st.just(10), st.binary(max_size=125)),  # unsolicited pong
    st.builds(WsFrame, st.just(0), st.binary(max_size=64)),  # continuation of nothing
    st.builds(WsFrame, st.just(1), ws_text, st.just(False)),  # a fragment never finished
    st.builds(WsFrame, st.sampled_from((3, 7, 11, 15)), st.binary(max_size=32)),  # reserved
    st.builds(WsFrame, st.just(1), ws_action, st.just(True), st.integers(2, 200)),  # flood
    st.builds(
        WsFrame,
        st.just(8),
        st.one_of(
            st.just(b""),
            st.binary(min_size=1, max_size=1),
            st.integers(0, 65535).map(lambda code: code.to_bytes(2, "big")),
        ),
    ),  # close (frames after it follow in the script)
)


@dataclass(frozen=True, slots=True)
class WsScript:
    """What a hostile device does on `/api/ws`: frames, then maybe a hang-up mid-frame."""

    frames: tuple[WsFrame, ...]
    cut_last: bool = False
    """Drop the connection in the middle of the last frame."""


ws_script = st.builds(
    WsScript, st.lists(ws_frame, min_size=1, max_size=8).map(tuple), st.booleans()
)


# -- HTTP requests ---------------------------------------------------------------------------

HEADER_TEXT: Final = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
)
"""Anything a header value may carry on the wire (latin-1, no CR/LF)."""


@st.composite
def range_header(draw: st.DrawFn, size: int) -> str:
    """`Range` values of every shape: single, suffix, open, reversed, multi, beyond, garbage."""
    near = st.integers(0, size * 2 + 2)
    number = near | st.integers(0, 10**30) | st.just(size - 1) | st.just(size)
    kind = draw(
        st.sampled_from(
            ("single", "open", "suffix", "multi", "spaced", "unit", "empty", "huge", "garbage")
        )
    )
    if kind == "single":
        return f"bytes={draw(number)}-{draw(number)}"
    if kind == "open":
        return f"bytes={draw(number)}-"
    if kind == "suffix":
        return f"bytes=-{draw(number)}"
    if kind == "multi":
        parts = draw(
            st.lists(st.builds(lambda a, b: f"{a}-{b}", number, number), min_size=2, max_size=5)
        )
        return "bytes=" + ",".join(parts)
    if kind == "spaced":
        return f" BYTES = {draw(number)} - {draw(number)} "
    if kind == "unit":
        unit = draw(st.sampled_from(("items", "bits", "", "bytes ", "byte")))
        return f"{unit}={draw(number)}-{draw(number)}"
    if kind == "empty":
        return draw(st.sampled_from(("", "bytes=", "bytes=-", "bytes=--", "=", "-")))
    if kind == "huge":
        return "bytes=" + "9" * draw(st.integers(4_301, 6_000)) + "-"
    return draw(HEADER_TEXT)


METHODS: Final = ("GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS", "TRACE", "PROPFIND")
http_method = st.sampled_from(METHODS) | st.text(
    alphabet=string.ascii_uppercase, min_size=1, max_size=12
)
"""Request methods: the usual ones, WebDAV and invented ones (CONNECT needs an authority)."""

_SEGMENTS: Final = (
    "..",
    "%2e%2e",
    "%2E%2E",
    ".%2e",
    ".",
    "",
    "%2f",
    "%2F..%2F",
    "%00",
    "%ED%A0%80",
    "%ff",
    "%",
    "%zz",
    "~",
    "paced",
    "etc",
    "passwd",
    "image_arduino.bin",
    "image_user1-0x01000.bin",
    "image_user2-0x81000.bin",
    "tasmota-lite.bin",
    "not-a-token",
)
_PREFIXES: Final = ("/api/sonoff_ota/fw", "/ota", "/", "//", "/api", "/sonoff_ota/fw", "")
_URL_CHARS: Final = string.ascii_letters + string.digits + "-._~!$&'()*+,;=:@%"


@st.composite
def request_path(draw: st.DrawFn, tokens: tuple[str, ...]) -> str:
    """Request targets: our prefixes, tokens (live, expired, wrong), traversal, encodings."""
    segment = (
        st.sampled_from(_SEGMENTS) | st.sampled_from(tokens) | st.text(_URL_CHARS, max_size=12)
    )
    prefix = draw(st.sampled_from(_PREFIXES))
    parts = draw(st.lists(segment, min_size=0, max_size=5))
    path = prefix + "/" + "/".join(parts)
    query = draw(st.sampled_from(("", "?deviceid=1000e4c17c&ts=1&sign=x", "?", "?..=..")))
    form = draw(st.sampled_from(("origin", "origin", "origin", "absolute", "asterisk")))
    if form == "absolute":
        return "http://dl.itead.cn" + path + query
    if form == "asterisk":
        return "*"
    return path + query


# -- TLS -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class TlsOpening:
    """What a client sends to the TLS port before it hangs up."""

    kind: Literal["client_hello_prefix", "plain_http", "garbage", "nothing"]
    cut: int = 0
    """For `client_hello_prefix`: how many bytes of a real ClientHello are sent."""
    data: bytes = b""


tls_opening = st.one_of(
    st.builds(TlsOpening, st.just("client_hello_prefix"), st.integers(0, 600)),
    st.builds(
        TlsOpening,
        st.just("plain_http"),
        st.just(0),
        st.sampled_from(
            (
                b"POST /dispatch/device HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}",
                b"GET /api/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n",
                b"GET / HTTP/1.0\r\n\r\n",
            )
        ),
    ),
    st.builds(TlsOpening, st.just("garbage"), st.just(0), st.binary(min_size=1, max_size=300)),
    st.just(TlsOpening("nothing")),
)


# -- what devices answer ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceReply:
    """A raw HTTP reply from a hostile device, and how the connection ends."""

    status: int
    body: bytes
    headers: tuple[tuple[str, str], ...] = ()
    length: Literal["exact", "missing", "short", "long", "chunked_garbage"] = "exact"
    ending: Literal["close", "reset_mid_body", "not_http"] = "close"
    raw: bytes = b""
    """For `not_http`: the bytes sent instead of an HTTP reply."""
    extra: dict[str, str] = field(default_factory=dict)

    def render(self) -> tuple[bytes, bytes]:
        """(head-and-first-part, rest): a reset lands between the two."""
        if self.ending == "not_http":
            return self.raw, b""
        lines = [f"HTTP/1.1 {self.status} Whatever"]
        lines.extend(f"{name}: {value}" for name, value in self.headers)
        body = self.body
        if self.length == "exact":
            lines.append(f"Content-Length: {len(body)}")
        elif self.length == "short":
            lines.append(f"Content-Length: {max(len(body) - 1, 0)}")
        elif self.length == "long":
            lines.append(f"Content-Length: {len(body) + 100}")
        elif self.length == "chunked_garbage":
            lines.append("Transfer-Encoding: chunked")
            body = b"zz\r\n" + body
        lines.append("Connection: close")
        head = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
        if self.ending == "reset_mid_body":
            half = len(body) // 2
            return head + body[:half], body[half:]
        return head + body, b""


STATUSES: Final = st.sampled_from((200, 200, 200, 200, 201, 204, 301, 400, 401, 403, 404, 500, 503))
REPLY_HEADERS: Final = st.lists(
    st.tuples(
        st.sampled_from(("Content-Type", "Server", "X-Junk", "Content-Encoding", "Set-Cookie")),
        HEADER_TEXT.map(str.strip),
    ),
    max_size=3,
).map(tuple)
NOT_HTTP: Final = st.one_of(
    st.binary(min_size=1, max_size=200),
    st.sampled_from(
        (
            b"HTTP/1.1 200\r\n",
            b"HTTP/1.1 abc OK\r\n\r\n",
            b"HTTP/9.9 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"SSH-2.0-OpenSSH_9.6\r\n",
            b"HTTP/1.1 200 OK\r\n" + b"X: " + b"y" * 20_000 + b"\r\n\r\n",
        )
    ),
)


def device_reply(body: st.SearchStrategy[bytes]) -> st.SearchStrategy[DeviceReply]:
    """Replies with `body` (per endpoint), any status, framing errors, resets and non-HTTP."""
    return st.one_of(
        st.builds(
            DeviceReply,
            STATUSES,
            body,
            REPLY_HEADERS,
            st.sampled_from(
                ("exact", "exact", "exact", "missing", "short", "long", "chunked_garbage")
            ),
            st.sampled_from(("close", "close", "close", "reset_mid_body")),
        ),
        st.builds(
            DeviceReply,
            st.just(200),
            st.just(b""),
            st.just(()),
            st.just("exact"),
            st.just("not_http"),
            NOT_HTTP,
        ),
    )


setup_device_body = hostile_body(
    {
        "deviceid": st.sampled_from((DEVICEID, "1000E4C17C", "xyz", "1000e4c17c\n")) | json_values,
        "apikey": st.uuids().map(str),
        "accept": st.just("post"),
    }
)
setup_ap_body = hostile_body({"error": st.sampled_from((0, 1, -1, 404)) | st.integers()})
_info_data = st.fixed_dictionaries(
    {},
    optional={
        "deviceid": deviceids,
        "fwVersion": st.sampled_from(("3.6.0", "1.0.0", "x")) | json_values,
        "otaUnlock": st.sampled_from((True, False, "true", "TRUE", "no")) | json_values,
        "ssid": json_values,
        "bssid": json_values,
        "signalStrength": st.sampled_from(TRICKY_NUMBERS) | json_values,
        "switch": json_values,
        "startup": json_values,
    },
)
diy_body = hostile_body(
    {
        "seq": st.sampled_from(TRICKY_NUMBERS) | st.integers(),
        "error": st.sampled_from((0, 0, 0, 400, 401, 403, 404, 422, 424, 500, 999))
        | st.sampled_from(TRICKY_NUMBERS),
        "data": _info_data
        | _info_data.map(json.dumps)
        | pathological_json().map(lambda b: b.decode("utf-8", "replace")),
    }
)
"""`/zeroconf/*` reply bodies (info, ota_unlock, ota_flash share the envelope)."""
tasmota_body = st.one_of(
    hostile_body(
        {
            "POWER": st.sampled_from(("ON", "OFF")),
            "Command": st.sampled_from(("Unknown", "Error")),
            "WARNING": st.sampled_from(("Need user=<username>&password=<password>", "x")),
            "StatusMQT": json_values,
            "Status": json_values,
        }
    ),
    st.sampled_from(
        (
            b"Referer 'http://x' denied. Use 'SO128 1' for HTTP API commands.",
            b"<html>bad referrer</html>",
        )
    ),
)
"""`/cm?cmnd=...` reply bodies."""


# -- mDNS and MQTT ---------------------------------------------------------------------------

_txt_key = st.sampled_from(
    ("id", "ID", "type", "seq", "apivers", "encrypt", "data1", "data2", "data3", "data4", "txtvers")
) | st.text(max_size=8)
_txt_value = st.none() | st.binary(max_size=255) | st.text(max_size=64)
_data_json = st.one_of(
    _info_data.map(json.dumps),
    json_values.map(json.dumps),
    pathological_json().map(lambda b: b.decode("utf-8", "replace")),
)


@st.composite
def txt_record(
    draw: st.DrawFn,
) -> tuple[dict[str, str | bytes | None] | dict[bytes, str | bytes | None], str]:
    """(properties, instance name): TXT records of every shape, str or bytes keys."""
    props: dict[str, str | bytes | None] = draw(st.dictionaries(_txt_key, _txt_value, max_size=8))
    if draw(st.booleans()):
        props["id"] = draw(st.sampled_from((DEVICEID, "1000E4C17C", "", "x" * 40, "a b")))
    if draw(st.booleans()):
        data = draw(_data_json)
        chunks = [data[i : i + 249] for i in range(0, min(len(data), 249 * 4), 249)]
        for index, chunk in enumerate(chunks, start=1):
            props[f"data{index}"] = (
                chunk.encode("utf-8", "surrogatepass") if draw(st.booleans()) else chunk
            )
    name = draw(
        st.sampled_from(("", f"eWeLink_{DEVICEID}._ewelink._tcp.local.", "ewelink_", "eWeLink_!!"))
        | st.text(max_size=40)
    )
    if draw(st.booleans()):
        return {key.encode("utf-8", "surrogatepass"): value for key, value in props.items()}, name
    return props, name


MACS: Final = ("D8F15BAABBCC", "d8f15baabbcc", "D8:F1:5B:AA:BB:CC", "", "ZZZZZZZZZZZZ")


@st.composite
def discovery_message(draw: st.DrawFn) -> tuple[str, bytes]:
    """(topic, payload) on or around `tasmota/discovery/<MAC>/config`."""
    mac = draw(
        st.sampled_from(MACS)
        | st.text(string.ascii_uppercase + string.digits + "_-/+#", max_size=14)
    )
    kind = draw(st.sampled_from(("config", "config", "sensors", "other")))
    prefix = draw(
        st.sampled_from(("tasmota/discovery", "tasmota/discovery", "tasmota", "x/discovery"))
    )
    topic = f"{prefix}/{mac}/{kind}"
    payload = draw(
        hostile_body(
            {
                "mac": st.sampled_from((mac, *MACS)),
                "ver": st.sampled_from((1, 1, 2, "1")),
                "ip": st.just("127.0.0.1"),
                "t": st.just("tasmota_AABBCC"),
                "sw": st.sampled_from(("14.3.0(lite)", "14.3.0")),
                "dn": st.just("Tasmota"),
                "md": st.just("Sonoff Basic"),
                "hn": st.just("tasmota-AABBCC-3020"),
                "rl": st.lists(st.integers(-1, 3) | json_values, max_size=8),
                "fn": st.lists(json_values, max_size=8),
                "ft": json_values,
            }
        )
    )
    return topic, payload
