"""
The durable store: domain states written behind the memory layer, never on
the lookup path.  SQLite for one daemon, Redis for a fleet (with leases so
that one member refreshes a domain for all), and the service that flushes
them on a timer and at shutdown.

May import: evidence (the state it stores), net (the Redis wire), ops.
"""
