"""How an HTTP handler reaches the services: the one FastAPI dependency, ``RuntimeDep``.

``build_http_app`` stores the Runtime on the app; every route (native, generation, KServe) declares
``runtime: RuntimeDep`` and calls ``runtime.require_registry()`` (scoring routes, through
api/routing.py) / ``require_generation()``, which answer 503/404 while loading, draining, or when no
generator is configured.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from rewardserve.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    runtime: Runtime = request.app.state.runtime
    return runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
