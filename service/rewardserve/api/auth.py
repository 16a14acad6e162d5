"""API keys, one place for both transports.

With no key configured every route is open (a dev server on 127.0.0.1). With any key configured,
every HTTP route except the health probes (and ``/metrics`` unless ``metrics_auth``) and every gRPC
method except ``grpc.health.v1`` and reflection needs ``Authorization: Bearer KEY`` (gRPC: the
``authorization`` metadata). Scoring keys (``api_keys``) may call everything but the admin-only
operations; admin keys (``admin_keys``) may call everything.

Keys are compared in constant time, each against every configured key (``hmac.compare_digest``), so
neither the answer's timing nor which key matched tells a caller anything about a key. Keys are
never logged: logs carry a key id, a short hash of the key.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from rewardserve.config import Settings
from rewardserve.errors import AuthError, Forbidden

#: HTTP paths a scoring key may not call (admin keys only).
ADMIN_HTTP_PATHS = frozenset({"/v1/generator/weights"})
#: gRPC methods a scoring key may not call (none today: weight reloads are HTTP only).
ADMIN_GRPC_METHODS: frozenset[str] = frozenset()
#: HTTP paths open to everyone even with keys configured (orchestrator probes).
OPEN_HTTP_PATHS = frozenset({"/health/live", "/health/ready"})
#: gRPC services open to everyone: health checks and reflection.
OPEN_GRPC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")

_MISSING = "missing or invalid API key: send the header 'Authorization: Bearer KEY'"
_NOT_ADMIN = "this operation needs an admin key"


class Role(Enum):
    ANONYMOUS = "anonymous"  # no keys configured: everything is open
    SCORING = "scoring"
    ADMIN = "admin"


@dataclass(frozen=True)
class Caller:
    role: Role
    key_id: str  # for logs: "-" when anonymous


def key_id(key: str) -> str:
    """A short, stable name for a key in logs: the first 8 hex digits of its SHA-256."""
    return hashlib.sha256(key.encode()).hexdigest()[:8]


def _matches(candidate: bytes, keys: tuple[bytes, ...]) -> bool:
    # Every key is compared, whatever matched first: the time taken does not depend on which matched.
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


class Authenticator:
    """Decides who a request comes from and whether it may proceed."""

    def __init__(self, settings: Settings) -> None:
        self._scoring = tuple(k.encode() for k in settings.api_keys)
        self._admin = tuple(k.encode() for k in settings.admin_keys)
        self.enabled = settings.auth_enabled
        self.metrics_open = not settings.metrics_auth

    def caller(self, authorization: str | None) -> Caller:
        """The caller behind an ``Authorization`` header value; AuthError (401) without a valid key."""
        if not self.enabled:
            return Caller(Role.ANONYMOUS, "-")
        scheme, _, token = (authorization or "").strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(_MISSING)
        candidate = token.encode()
        # Both lists are always checked (constant work whichever list holds the key).
        admin = _matches(candidate, self._admin)
        scoring = _matches(candidate, self._scoring)
        if not (admin or scoring):
            raise AuthError(_MISSING)
        return Caller(Role.ADMIN if admin else Role.SCORING, key_id(token))

    def http_needs_key(self, path: str) -> bool:
        if not self.enabled or path in OPEN_HTTP_PATHS:
            return False
        return not (path == "/metrics" and self.metrics_open)

    def check_http(self, path: str, authorization: str | None) -> Caller:
        """The caller of an HTTP request to ``path``; AuthError (401) or Forbidden (403)."""
        if not self.http_needs_key(path):
            return Caller(Role.ANONYMOUS, "-")
        caller = self.caller(authorization)
        if path in ADMIN_HTTP_PATHS and caller.role is not Role.ADMIN:
            raise Forbidden(_NOT_ADMIN)
        return caller

    def check_grpc(self, method: str, authorization: str | None) -> Caller:
        """The caller of the gRPC ``method`` (``/package.Service/Method``)."""
        if not self.enabled or method.startswith(OPEN_GRPC_PREFIXES):
            return Caller(Role.ANONYMOUS, "-")
        caller = self.caller(authorization)
        if method in ADMIN_GRPC_METHODS and caller.role is not Role.ADMIN:
            raise Forbidden(_NOT_ADMIN)
        return caller


_RELOAD_REFUSED = (
    "weights path refused: reloads read only directories inside the server's weights root "
    "(--weights-root); ask the operator for the allowed location"
)


def allowed_weights_path(root: Path | None, requested: str) -> Path:
    """``requested`` resolved (symlinks and ``..`` followed), if it is an existing directory inside
    ``root``; otherwise Forbidden with one message whatever the reason (unset root, missing path,
    outside the root, not a directory), so that the answers cannot be used to probe the filesystem."""
    if root is None:
        raise Forbidden(_RELOAD_REFUSED)
    try:
        base = root.resolve(strict=True)
        path = Path(requested).resolve(strict=True)
        inside = path.is_relative_to(base) and path.is_dir()
    except (OSError, RuntimeError, ValueError):  # missing, a symlink loop, a NUL byte
        inside = False
    if not inside:
        raise Forbidden(_RELOAD_REFUSED)
    return path
