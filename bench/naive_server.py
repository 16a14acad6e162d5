"""Baseline for bench_scoring.py: what OpenRLHF's serve_rm does, written from its description.

A FastAPI `/get_reward` whose handler tokenizes the request's queries and runs the reward model on
them right there, each request on its own (no cross-request batching, the forward blocks the event
loop). Plain transformers, the same model and the same dtype as rewardserve. Not part of the service.
"""

from __future__ import annotations

import socket
import sys

import torch
import uvicorn
from fastapi import FastAPI
from pydantic import BaseModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer


class Body(BaseModel):
    query: list[str]


def main() -> None:
    model_dir = sys.argv[1]
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    app = FastAPI()

    @app.get("/health/ready")
    async def ready() -> dict[str, str]:
        return {"status": "ready"}

    @app.post("/get_reward")
    async def get_reward(body: Body) -> dict[str, list[float]]:
        if not body.query:
            return {"rewards": [], "scores": []}
        enc = tok(
            body.query,
            padding=True,
            truncation=True,
            max_length=2048,
            add_special_tokens=False,
            return_tensors="pt",
        )
        with torch.no_grad():
            rewards = model(**enc).logits[:, 0].tolist()
        return {"rewards": rewards, "scores": rewards}

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    print(f"HTTP on http://127.0.0.1:{sock.getsockname()[1]}", flush=True)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False))
    server.run(sockets=[sock])


if __name__ == "__main__":
    main()
