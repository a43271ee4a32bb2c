"""Private aiohttp listeners that exist only while a flash needs them.

Old firmware forces two listeners HA's own server cannot be: a TLS one with
legacy ciphers for the fake cloud, and plain HTTP on :8080 for the
intermediate image. They run on their own `AppRunner` in HA's event loop (the
`emulated_hue` pattern), never as a site on HA's runner, which would expose
HA's whole API on them. There is no HA middleware on these apps: every view
mounted here is unauthenticated by design and answers 404 to strangers.

A flow checks the ports before anything irreversible, but another program can
take one between that check and the bind. `start()` then gives the same outcome
as the check: `PortInUseError`, the `port_in_use` repair issue naming the port,
and nothing of the listener left open. A later successful bind takes the port
out of the issue again.
"""

from __future__ import annotations

from collections.abc import Iterable
import errno
import logging
import ssl

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from homeassistant.core import HomeAssistant
from homeassistant.helpers.http import KEY_HASS, HomeAssistantView

from .issues import async_port_bound, async_port_busy

_LOGGER = logging.getLogger(__name__)


class _PeerErrorFilter(logging.Filter):
    """A request the HTTP parser refuses is the peer's fault: one warning, no traceback.

    aiohttp (3.12+) logs such requests ("Error handling request from ...") at ERROR with a
    traceback. Anything on the network can send them to our listeners, so they become a
    warning that names the problem. Exceptions of our own views stay errors with traceback.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            record.msg = f"{record.getMessage()}: refused a malformed request (%s)"
            record.args = (" ".join(str(exc).split()) or type(exc).__name__,)
            record.exc_info = None
            record.exc_text = None
            record.levelno = logging.WARNING
            record.levelname = logging.getLevelName(logging.WARNING)
        return True


_HTTP_LOGGER = logging.getLogger(f"{__name__}.http")
"""The private listeners' aiohttp server log (instead of `aiohttp.server`)."""
_HTTP_LOGGER.addFilter(_PeerErrorFilter())


class PortInUseError(Exception):
    """The port a listener needs is held by another program."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__(f"{host}:{port} is in use")
        self.host = host
        self.port = port


class PrivateListener:
    """One aiohttp app with our views, bound to one host/port (optionally TLS)."""

    def __init__(
        self,
        hass: HomeAssistant,
        name: str,
        views: Iterable[HomeAssistantView],
        host: str,
        port: int,
        *,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Prepare (not yet bound) a listener serving `views`."""
        self.name = name
        self._hass = hass
        self.host = host
        self.port = port
        self._ssl = ssl_context
        self._app = web.Application()
        self._app[KEY_HASS] = hass
        for view in views:
            view.register(hass, self._app, self._app.router)
        self._runner: web.AppRunner | None = None

    @property
    def running(self) -> bool:
        """True while bound."""
        return self._runner is not None

    async def start(self) -> None:
        """Bind; raise `PortInUseError` when the port is taken."""
        runner = web.AppRunner(
            self._app, access_log=None, handle_signals=False, logger=_HTTP_LOGGER
        )
        await runner.setup()
        site = web.TCPSite(runner, self.host, self.port, ssl_context=self._ssl, reuse_address=True)
        try:
            await site.start()
        except OSError as err:
            await runner.cleanup()
            if err.errno in (errno.EADDRINUSE, errno.EACCES):
                _LOGGER.warning(
                    "%s cannot listen on %s:%s: another program took it",
                    self.name,
                    self.host,
                    self.port,
                )
                async_port_busy(self._hass, f"{self.host}:{self.port}")
                raise PortInUseError(self.host, self.port) from err
            raise
        except BaseException:
            await runner.cleanup()  # cancelled mid-bind: nothing may stay open
            raise
        if self.port:
            async_port_bound(self._hass, f"{self.host}:{self.port}")
        self._runner = runner
        if self.port == 0 and site._server is not None:
            sockets = getattr(site._server, "sockets", None) or []
            if sockets:
                self.port = sockets[0].getsockname()[1]
        _LOGGER.debug("%s listening on %s:%s", self.name, self.host, self.port)

    async def stop(self) -> None:
        """Unbind and close open connections."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()
            _LOGGER.debug("%s on %s:%s closed", self.name, self.host, self.port)


async def async_check_port_free(host: str, port: int) -> bool:
    """Tell whether `host:port` can be bound right now (binds and releases it)."""
    runner = web.AppRunner(web.Application(), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True)
    try:
        await site.start()
    except OSError:
        return False
    finally:
        await runner.cleanup()
    return True
