"""Transports: HTTP (FastAPI) and gRPC over the same services."""
