"""The parameter server: flat layout, wire protocol, shard core, asyncio shard server, checkpoints, client,
exchange, launcher and supervisor.

Usable on its own, without Spark or Keras (``zdk ps``); import-linter keeps it that way.
"""
