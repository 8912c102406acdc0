"""
The cache: every domain's evidence and verdict in memory, in front of the
evaluator and the store.

Owns the cached entries and their eviction (entries), the evaluations
(evaluations: coalesced per domain, bounded, waited for no longer than the
lookup deadline), reading the store at start-up and on a miss (loading),
fleet leases and adopting a peer's results (fleet), the administrator's
policy applied to the entries (judging: policy decides and words, the cache
counts and logs), the PolicyCache that assembles them for the answers and
the control commands (policycache), and the refresher that keeps recently
used domains fresh.

May import: policy, evidence, store, ops.
"""
