"""
Operations: how the daemon tells the administrator how it is doing.

Owns the metrics registry and its Prometheus endpoint, the systemd notify
protocol, "once per outage" logging and the way times are written for
people.  Used by every other part.

May import: nothing else of mxpolicyd.
"""
