"""The parameter server: wire protocol, shard core, asyncio shard server, client, launcher, flat layout.

Usable on its own, without Spark or Keras (``zdk ps``); import-linter keeps it that way.
"""
