"""Helpers for tests and benchmarks: tiny random-weight models and tokenizers built offline."""
