"""
The cache: every domain's evidence and verdict in memory, in front of the
evaluator and the store.

Owns the cached entries and their eviction, the evaluations (coalesced per
domain, bounded, waited for no longer than the lookup deadline), reading
the store at start-up, fleet leases, and the refresher that keeps recently
used domains fresh.

May import: policy, evidence, store, ops.
"""
