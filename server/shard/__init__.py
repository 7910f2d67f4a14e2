"""Semantic sharding of the catalogue across servers (DESIGN 14.3).

* :mod:`.plan` - shard plans: trie subtrees packed by items / load, hot-item replication, and the
  consistent-hashing baseline.
* :mod:`.route` - query routing for generative retrieval: a router step picks the shards of the
  query's top prefixes, or scatter to all and merge by score.

>>> from server.shard.plan import ShardPlan
>>> ShardPlan.__name__
'ShardPlan'
"""

__all__ = ["plan", "route"]
