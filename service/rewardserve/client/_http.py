"""HTTP transport (httpx): one pooled connection set per server, JSON in and out.

A transport makes ONE try against ONE server and turns every failure into a ``RewardServeError``;
retries, fail-over and chunking live in the clients above it.
"""

from __future__ import annotations

import email.utils
import json
import time
from collections.abc import Mapping
from typing import Any

import httpx

from rewardserve.client import errors
from rewardserve.client._core import TlsFiles

# op -> (method, path). The op names are shared with the gRPC transport.
ROUTES: dict[str, tuple[str, str]] = {
    "score": ("POST", "/v1/score"),
    "compare": ("POST", "/v1/compare"),
    "models": ("GET", "/v1/models"),
    "generate": ("POST", "/v1/generate"),
    "rollout": ("POST", "/v1/rollout"),
}

JSON = dict[str, Any]


def parse_retry_after(value: str | None) -> float | None:
    """``Retry-After`` as seconds: delta-seconds or an HTTP date (RFC 9110)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


_BY_STATUS: dict[int, type[errors.RewardServeError]] = {
    400: errors.InvalidRequest,
    401: errors.AuthError,
    403: errors.Forbidden,
    404: errors.ModelNotFound,
    413: errors.InvalidRequest,
    422: errors.InvalidRequest,
    429: errors.Overloaded,
    502: errors.Unavailable,
    503: errors.Unavailable,
    504: errors.DeadlineExceeded,
}


def status_error(url: str, path: str, response: httpx.Response) -> errors.RewardServeError:
    """The error for a non-2xx answer, with the server's own message when it sent one."""
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        body = None
    message = body.get("error") if isinstance(body, dict) else None
    if response.status_code == 404 and not message:
        # No rewardserve error body: the route itself is missing (an older server, or a server
        # started without a generator), not a model.
        return errors.NotSupported(f"{path} is not served here", endpoint=url, status=404)
    cls = _BY_STATUS.get(response.status_code)
    if cls is None:
        cls = errors.ServerError if response.status_code >= 500 else errors.InvalidRequest
    return cls(
        str(message or response.reason_phrase or "request failed"),
        endpoint=url,
        status=response.status_code,
        retry_after_s=parse_retry_after(response.headers.get("retry-after")),
    )


def transport_error(url: str, exc: httpx.TransportError) -> errors.RewardServeError:
    """Connection-level failures: unreachable or reset servers are Unavailable (retried, marked
    down); a read that ran out of time is a DeadlineExceeded (not retried)."""
    if isinstance(exc, httpx.ConnectTimeout | httpx.ConnectError | httpx.RemoteProtocolError):
        return errors.Unavailable(f"cannot reach server: {type(exc).__name__}", endpoint=url)
    if isinstance(exc, httpx.PoolTimeout):
        return errors.DeadlineExceeded("no free connection in the client's pool in time", endpoint=url)
    if isinstance(exc, httpx.TimeoutException):
        return errors.DeadlineExceeded("timed out waiting for the server", endpoint=url)
    # ReadError / WriteError: the connection broke mid-call (server killed). Scoring is idempotent,
    # so trying again elsewhere is safe.
    return errors.Unavailable(f"connection failed: {type(exc).__name__}", endpoint=url)


def _decode(url: str, response: httpx.Response) -> JSON:
    try:
        body = response.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise errors.ServerError("server answered with something that is not JSON", endpoint=url) from None
    if not isinstance(body, dict):
        raise errors.ServerError("server answered with JSON that is not an object", endpoint=url)
    return body


def _timeouts(timeout: float, connect_timeout: float) -> httpx.Timeout:
    return httpx.Timeout(timeout, connect=min(connect_timeout, timeout))


class HttpTransport:
    """Blocking HTTP to one server (``httpx.Client``: keep-alive pool, thread-safe)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        tls: TlsFiles | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._client = httpx.Client(
            base_url=self.url,
            verify=tls.ssl_context() if tls is not None else True,
            timeout=_timeouts(timeout, connect_timeout),
            headers=dict(headers or {}),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    def call(self, op: str, body: JSON | None, timeout: float) -> JSON:
        method, path = ROUTES[op]
        try:
            response = self._client.request(
                method, path, json=body, timeout=_timeouts(timeout, self._connect_timeout)
            )
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc
        if not response.is_success:
            raise status_error(self.url, path, response)
        return _decode(self.url, response)

    def close(self) -> None:
        self._client.close()


class AsyncHttpTransport:
    """Non-blocking HTTP to one server (``httpx.AsyncClient``, bound to the loop that uses it)."""

    def __init__(
        self,
        url: str,
        *,
        timeout: float,
        connect_timeout: float,
        headers: Mapping[str, str] | None = None,
        max_connections: int = 64,
        tls: TlsFiles | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._connect_timeout = connect_timeout
        self._client = httpx.AsyncClient(
            base_url=self.url,
            verify=tls.ssl_context() if tls is not None else True,
            timeout=_timeouts(timeout, connect_timeout),
            headers=dict(headers or {}),
            limits=httpx.Limits(max_connections=max_connections, max_keepalive_connections=max_connections),
        )

    async def call(self, op: str, body: JSON | None, timeout: float) -> JSON:
        method, path = ROUTES[op]
        try:
            response = await self._client.request(
                method, path, json=body, timeout=_timeouts(timeout, self._connect_timeout)
            )
        except httpx.TransportError as exc:
            raise transport_error(self.url, exc) from exc
        if not response.is_success:
            raise status_error(self.url, path, response)
        return _decode(self.url, response)

    async def aclose(self) -> None:
        await self._client.aclose()
