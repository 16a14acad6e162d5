"""Work for a client that hung up is dropped, on every scoring and generation route.

``unless_disconnected(request, work)`` runs the handler's work and, beside it, waits for the ASGI
``http.disconnect``; whichever finishes first cancels the other (vLLM's ``with_cancellation`` does the
same). Cancelling a scoring call cancels its batcher future, and the batcher drops a request's items
whose future is done before they reach the model; cancelling generation aborts its vLLM requests.
The handler then answers 499 (nginx's "client closed request") to nobody, which /metrics counts as
``rewardserve_requests_total{code="499"}`` and ``rewardserve_rejected_total{reason="cancelled"}``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import Request
from starlette.types import Receive

from rewardserve.errors import ClientGone

T = TypeVar("T")

CLIENT_GONE = 499


async def wait_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work``; cancel it and raise ClientGone if the client disconnects first. The body has
    been read by now (api/http/middleware.BodyReader), so the next ASGI message is the disconnect."""
    task = asyncio.ensure_future(work)
    watch = asyncio.ensure_future(wait_disconnect(request.receive))
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            return task.result()
        raise ClientGone("the client disconnected")
    finally:
        for t in (task, watch):
            t.cancel()
        await asyncio.gather(task, watch, return_exceptions=True)
