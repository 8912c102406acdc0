"""
Integration tests: real nsd, nginx and Postfix's postmap on loopback talk to a
real mxpolicyd process, so the whole chain from DNS and HTTPS to the socketmap
answer Postfix reads is exercised as deployed.
"""
