"""
The wire codecs: Postfix's socketmap, Exim's readsocket line and the
control socket's JSON lines, with the connection limits they share.  Each
parses bytes and writes bytes and calls one injected function; none knows
of caches, DNS or HTTP.

May import: ops.
"""
