"""Semantic sharding of the catalogue across servers (DESIGN 14.3).

* :mod:`.plan` - shard plans: trie subtrees packed by items / load, hot-item replication, and the
  consistent-hashing baseline.
* :mod:`.route` - query routing for generative retrieval: a router step picks the shards of the
  query's top prefixes, or scatter to all and merge by score.
* :mod:`.serving` / :mod:`.router` - the shards on Ray Serve (one deployment per shard, a FastAPI router).
* :mod:`.meta` - shard metadata in etcd: what each shard serves (CAS switches, canary rollout), replica
  leases, the single-writer lock and its fencing token.
* :mod:`.log` - catalogue updates through NATS JetStream: the leased writer appends, each replica's
  durable consumer applies in order.
* :mod:`.engines` - etcd and NATS clusters on loopback for tests and benchmarks (the Debian binaries).

>>> from server.shard.plan import ShardPlan
>>> ShardPlan.__name__
'ShardPlan'
"""

__all__ = ["plan", "route", "serving", "meta", "log", "engines"]
