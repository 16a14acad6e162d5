"""Bulk scoring of logged outputs (JSONL / Parquet): in-process, against a server, or on Ray.

Modules: ``inputs`` (find, scan and read input files), ``rows`` (row -> ScoreInput, output tables),
``shards`` (manifest, part files, final assembly), ``job`` (score one shard: shared by every engine),
``local`` / ``server`` (through ``AsyncRewardClient``) / ``ray_runner`` (engines), ``runner``
(orchestration, progress, summary), ``report`` (statistics and the histogram). The command line
is ``rewardserve.cli.score_logs``; bulk never imports the CLI or the server app. Nothing is imported
here, so ``rewardserve --help`` stays fast; entry point: ``rewardserve.bulk.runner.score_logs``.
"""
