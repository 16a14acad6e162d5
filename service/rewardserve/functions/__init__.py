"""Reward functions: built-in verifiers and user code, run in a pool of killable worker processes.

``source.FunctionSource`` is the registry entry (kind "function"); ``pool.WorkerPool`` runs the calls;
``worker`` is what runs inside each process; ``builtins`` holds math / exact / regex / json.
"""
