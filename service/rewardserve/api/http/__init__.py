"""HTTP transport (FastAPI): ``build_http_app`` over a Runtime's services."""

from rewardserve.api.http.app import build_http_app

__all__ = ["build_http_app"]
