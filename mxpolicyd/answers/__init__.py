"""
The answers: from a request key to the reply bytes, behind the codecs.

Owns the memo of rendered replies (the hot path: one dict lookup for a
cached domain), the profiles (how a verdict is written per socketmap name),
the Postfix, Exim and TLSRPT renderers, and the administrators' control
commands.

May import: protocols (their types), cache, policy, evidence, ops.
"""
