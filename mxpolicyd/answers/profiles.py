"""
Profiles: how a verdict is written for one socketmap name.

The map name in C{smtp_tls_policy_maps} picks one, so that one daemon
serves Postfix 3.7 (no TLSRPT attributes: it defers on them), Postfix >=
3.10 (with them) and administrators who enforce C{testing} policies.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Profile:
    """
    How a verdict is written for one socketmap name.

    Postfix 3.7 to 3.9 defer mail when given TLSRPT attributes, so those are
    off unless a profile asks for them.
    """

    name: str
    servername: bool = True
    strict_testing: bool = False
    tlsrpt: bool = False


BUILTIN_PROFILES: dict[str, Profile] = {
    "postfix": Profile("postfix"),
    "postfix-strict": Profile("postfix-strict", strict_testing=True),
    "postfix-tlsrpt": Profile("postfix-tlsrpt", tlsrpt=True),
}
