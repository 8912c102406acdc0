"""
The network clients, each on the reactor with a deadline on every step:
DNS (dnspython messages over Twisted UDP/TCP), the HTTPS policy fetcher
(treq) and the Redis wire (RESP2).  They know transports and protocols, not
what MTA-STS or DANE mean.

May import: ops.
"""
