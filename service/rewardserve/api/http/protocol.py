"""The HTTP/1.1 connection guard under the ASGI app (uvicorn's h11 protocol, bounded).

uvicorn closes an idle keep-alive connection only after a response, and restarts that timer on any
byte: a connection that sends nothing, or trickles an endless request head, would hold its socket
and buffer for ever. Here every connection must deliver a complete request head within
``request_read_timeout_s`` of opening (or of its previous answer), or it is closed; the body then
has its own deadline in api/http/middleware.BodyReader (408). The head itself is bounded by
h11's ``max_incomplete_event_size`` (``max_header_bytes``). Connections over ``max_connections``
get a 503 in the service's error format and are closed at once.

h11 rather than httptools: httptools accepts request heads of any size.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from rewardserve.config import Settings
from rewardserve.naming import setting_name


def _busy_response() -> bytes:
    body = json.dumps(
        {
            "error": f"too many open connections; retry later, or raise {setting_name('max_connections')}",
            "type": "overloaded",
        }
    ).encode()
    head = (
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nretry-after: 1\r\nconnection: close\r\n\r\n"
    )
    return head.encode() + body


_BUSY = _busy_response()


def _bad_request(max_header_bytes: int) -> tuple[list[tuple[bytes, bytes]], bytes]:
    body = json.dumps(
        {
            "error": f"invalid HTTP request: malformed, or a request head over {max_header_bytes} bytes "
            f"(raise {setting_name('max_header_bytes')})",
            "type": "validation",
        }
    ).encode()
    headers = [(b"content-type", b"application/json"), (b"connection", b"close")]
    return headers, body


def guarded_protocol(head_timeout_s: float, max_connections: int, max_header_bytes: int) -> type[H11Protocol]:
    """An H11Protocol class with the limits above (uvicorn.Config(http=...) takes a class)."""
    bad_headers, bad_body = _bad_request(max_header_bytes)

    class GuardedH11Protocol(H11Protocol):
        _head_timer: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                transport.write(_BUSY)
                transport.close()
                return
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if self._serving():
                self._disarm()  # the head arrived; the body has its own deadline

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing() and not self._serving():
                self._arm()  # the next request head must come in time too

        def send_400_response(self, msg: str) -> None:
            # uvicorn's own answer is plain text; every error of the service is {"error", "type"}.
            event = h11.Response(status_code=400, headers=bad_headers, reason=b"Bad Request")
            self.transport.write(self.conn.send(event) or b"")
            self.transport.write(self.conn.send(h11.Data(data=bad_body)) or b"")
            self.transport.write(self.conn.send(h11.EndOfMessage()) or b"")
            self.transport.close()

        def _serving(self) -> bool:
            return self.cycle is not None and not self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._head_timer = self.loop.call_later(head_timeout_s, self._head_timeout)

        def _disarm(self) -> None:
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None

        def _head_timeout(self) -> None:
            self._head_timer = None
            if not self._serving():
                self.transport.close()

    return GuardedH11Protocol


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for the connection limits and TLS in ``settings``."""
    import ssl

    options: dict[str, Any] = {
        "http": guarded_protocol(
            settings.request_read_timeout_s, settings.max_connections, settings.max_header_bytes
        ),
        "h11_max_incomplete_event_size": settings.max_header_bytes,
    }
    if settings.tls_cert is not None:
        options["ssl_certfile"] = str(settings.tls_cert)
        options["ssl_keyfile"] = str(settings.tls_key)
        if settings.tls_client_ca is not None:
            options["ssl_ca_certs"] = str(settings.tls_client_ca)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    return options
