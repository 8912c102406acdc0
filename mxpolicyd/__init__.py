"""
mxpolicyd: MTA-STS and DANE TLS policy for Postfix and Exim.

Postfix asks over socketmap and Exim over readsocket; both get a verdict
derived from the destination domain's MTA-STS policy and DANE records, kept
warm in a persistent store.
"""

__version__ = "0.1.0"
