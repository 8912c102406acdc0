"""
The policy: what the MTA is told, given the evidence.  Pure functions over
plain data and a time, so that table tests cover every rule without a
reactor.

Owns the verdict and L{decide} (DESIGN's answer table), the answer while a
first evaluation runs, the administrator's rules as data, and the judge:
overrides, minimum levels, the downgrade memory, the one table of how
strong each verdict is, and the wording of the log lines about them; and
the merge of a fleet peer's state with a daemon's own (never weaker).

May import: evidence (its data types and names), ops.
"""
