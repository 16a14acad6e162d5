"""Reward sources: everything a request can name (models, PRMs, ensembles, composites, ...).

Every kind implements ``RewardSource`` (base.py); the registry (rewardserve/registry.py) holds them by
name, and transports call ``source.score(inputs, options)`` without knowing the kind.
"""
