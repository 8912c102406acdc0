"""
The evidence: what is known about a destination domain, and gathering it.

Owns domain names (key normalisation, host name rules), the MTA-STS rules
(record and policy parsing, MX patterns: pure) and their discovery (TXT,
fetch, RFC 8461's cache rules), the DANE rules (TLSA usability and the
domain's DANE status: pure) and their lookups, the evaluator that runs both
in parallel, and L{DomainState}, the record of it all that the store keeps.

May import: net, ops.
"""
