"""Every exception type of the package, under one base.

Pure Python, no imports beyond the standard library: the client (no torch), the compute layer
(torch + transformers, no pydantic) and the transports all import from here.

::

    RewardServeError
    ├── request errors: the caller must change the request
    │   ├── InvalidRequest
    │   │   └── InputError            (server: a field is wrong, an input too long)
    │   ├── ModelNotFound
    │   ├── AuthError                 (no valid key: 401 / UNAUTHENTICATED)
    │   │   └── Forbidden             (a valid key, not allowed this: 403 / PERMISSION_DENIED)
    │   └── NotSupported              (client: the server has no such endpoint)
    ├── capacity errors: retrying later (or elsewhere) can help
    │   ├── Overloaded
    │   ├── Unavailable
    │   │   ├── NotReady              (server: loading, reloading, or draining)
    │   │   └── Draining              (server: shutting down)
    │   └── DeadlineExceeded
    ├── ServerError                   (client: the server failed or answered garbage)
    ├── NonFiniteReward               (server: the model produced NaN/Inf for one input)
    ├── internal signals, never shown to a client
    │   ├── OutOfMemory               (engine -> batcher: split the batch)
    │   └── ClientGone                (HTTP: the caller hung up)
    ├── start-up
    │   └── ConfigError               (the registry declaration or a reward function/judge is wrong)
    └── command-line jobs
        ├── BulkError
        ├── RowError
        └── DemoBuildError

The server and the client share the request and capacity classes: a server raises
``Overloaded("...", retry_after_s=2)``, ``api/errors.classify`` turns it into 429 + Retry-After (or
RESOURCE_EXHAUSTED + a ``retry-after`` trailer), and the client turns that answer back into
``Overloaded`` with ``endpoint`` and ``status`` filled in. ``rewardserve.client`` re-exports the
classes a client can see.
"""

from __future__ import annotations

__all__ = [
    "AuthError",
    "BulkError",
    "ClientGone",
    "ConfigError",
    "DeadlineExceeded",
    "DemoBuildError",
    "Draining",
    "Forbidden",
    "InputError",
    "InvalidRequest",
    "ModelNotFound",
    "NonFiniteReward",
    "NotReady",
    "NotSupported",
    "OutOfMemory",
    "Overloaded",
    "RewardServeError",
    "RowError",
    "ServerError",
    "Unavailable",
]


class RewardServeError(Exception):
    """Base class of every error the package raises. ``message`` is safe to show a client: no
    paths, no tracebacks.

    On the client side each error also says whether retrying can help (``retryable``), whether the
    endpoint itself looks gone (``endpoint_down``: the load balancer stops sending it work for a
    cool-off period) and how long the server asked the client to wait (``retry_after_s``, from HTTP
    ``Retry-After`` or the gRPC ``retry-after`` trailer).
    """

    retryable: bool = False
    endpoint_down: bool = False

    def __init__(
        self,
        message: str = "",
        *,
        endpoint: str | None = None,
        status: int | str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.endpoint = endpoint
        """The server URL that answered (or failed to); set by the client."""
        self.status = status
        """HTTP status code, or gRPC status code name; set by the client."""
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        where = f" [{self.endpoint}]" if self.endpoint else ""
        status = f" ({self.status})" if self.status is not None else ""
        return f"{self.message}{status}{where}"


# --- request errors: the caller must change the request -----------------------------------------


class InvalidRequest(RewardServeError):
    """The request is invalid. Raised by the client when the server refused the inputs (HTTP
    400/413/422, INVALID_ARGUMENT): fix the request."""


class InputError(InvalidRequest, ValueError):
    """Raised by the server (transports, scoring, generation) when a field is wrong or an input is
    too long without ``truncate``. HTTP 422 / INVALID_ARGUMENT. ``index`` names the offending input."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        self.index = index
        super().__init__(message if index is None else f"inputs[{index}]: {message}")


class ModelNotFound(RewardServeError):
    """The request names a model the server does not serve (or asks a scoring-only server to
    generate). Raised by the server's services and by the client on HTTP 404 / NOT_FOUND."""


class AuthError(RewardServeError):
    """No valid credentials: raised by the server's auth layer (HTTP 401 + ``WWW-Authenticate:
    Bearer``, UNAUTHENTICATED) and by the client when the server refused the credentials (HTTP
    401/403, UNAUTHENTICATED/PERMISSION_DENIED)."""


class Forbidden(AuthError):
    """The caller is known but may not do this (a scoring key reloading weights, a weights path
    outside the allowed root): HTTP 403 ``{"type": "forbidden"}``, PERMISSION_DENIED."""


class NotSupported(RewardServeError):
    """Raised by the client when the server has no such endpoint, e.g. gRPC generation on a build
    without it (UNIMPLEMENTED)."""


# --- capacity errors: retrying later, or on another replica, can help ---------------------------


class Overloaded(RewardServeError):
    """Admission refused: too many requests or tokens queued. Raised by the batcher and the
    generator before any work is done (HTTP 429 + Retry-After, RESOURCE_EXHAUSTED), and by the client
    for such an answer. Retry after ``retry_after_s`` seconds."""

    retryable = True


class Unavailable(RewardServeError):
    """The server cannot take work now: unreachable, loading or draining (HTTP 502/503,
    UNAVAILABLE). Raised by the client, which retries it, on another endpoint when there is one."""

    retryable = True
    endpoint_down = True


class NotReady(Unavailable):
    """Raised by the server while models load, policy weights reload, or the server drains.
    HTTP 503 / UNAVAILABLE."""


class Draining(Unavailable):
    """Raised by the batcher and the generator once closed or closing: no more work is accepted.
    HTTP 503 / UNAVAILABLE, "retry on another replica"."""


class DeadlineExceeded(RewardServeError, TimeoutError):
    """A deadline passed. Raised by the batcher when a request's deadline passed before all its
    items were computed (HTTP 504, DEADLINE_EXCEEDED), and by the client when the call's timeout
    passed. The client does not retry it: the server may still be working on it, and sending it again
    would double the load."""


class ServerError(RewardServeError):
    """Raised by the client when the server failed (HTTP 500, INTERNAL) or answered something the
    client cannot read."""


class NonFiniteReward(RewardServeError):
    """Raised by the scoring service when the model produced a NaN or infinite reward for an input:
    that input's request fails (HTTP 500, type internal, with this message; gRPC INTERNAL), its batch
    mates do not. Counted in ``rewardserve_rejected_total{reason="non_finite"}``."""


# --- internal signals: never reach a client as such ---------------------------------------------


class OutOfMemory(RewardServeError):
    """Raised BY the engine's ``run`` when the batch did not fit in device memory: the batcher
    splits the batch, retries, and lowers its token budget."""


class ClientGone(RewardServeError):
    """Raised inside an HTTP handler when the caller disconnected before the answer was ready; the
    handler cancels the work and answers 499 to nobody."""


# --- start-up -------------------------------------------------------------------------------------


class ConfigError(RewardServeError, ValueError):
    """The served-model declaration (--model / --config YAML, --reward-fn) is invalid: unknown or
    duplicate names, a cycle, an ensemble member that is not a model, a bad normalization file, a
    reward function that does not load, a judge choice that is not one token. Raised at start-up; the
    message names the entry and says how to fix it."""


# --- command-line jobs ----------------------------------------------------------------------------


class BulkError(RewardServeError):
    """Raised by ``score-logs`` for a problem the user can fix (bad path, changed inputs,
    unreachable server); printed without a traceback, the process exits with ``exit_code``."""

    def __init__(self, message: str, *, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class RowError(RewardServeError, ValueError):
    """Raised by bulk row parsing when one row cannot be scored; the message is the reason written
    to the errors file and the job goes on."""


class DemoBuildError(RewardServeError, RuntimeError):
    """Raised when the demo model could not be built, or came out worse than
    ``demo.build.MIN_TEST_ACCURACY``."""
