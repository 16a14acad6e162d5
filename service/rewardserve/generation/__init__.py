"""Policy generation (vLLM) and rollouts. Nothing here imports vllm at package import: a scoring-only
server never loads it."""
