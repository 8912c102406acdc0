"""
The base class of the integration tests: it hands each test the session's
world and a way to start daemons, and reads postmap's output back into the
one answer Postfix would act on.
"""

from __future__ import annotations

import time
from typing import Callable

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from twisted.trial.unittest import SynchronousTestCase

from .daemon import Daemon, PostmapResult
from .world import World

NOT_FOUND = "<not found>"


def answer_of(result: PostmapResult) -> str:
    """
    The value for a found key, NOT_FOUND for a clean NOTFOUND, and the
    whole result for anything else (a lookup error Postfix would defer on).
    """
    if result.code == 0 and result.stdout.endswith("\n") and not result.stderr:
        return result.stdout[:-1]
    if result == PostmapResult(1, "", ""):
        return NOT_FOUND
    return f"<error: {result!r}>"


class IntegrationTestCase(SynchronousTestCase):
    """Tests against real servers; ``shared = True`` gives the class one daemon."""

    shared = False
    world: World
    start_daemon: Callable[..., Daemon]
    daemon: Daemon

    @pytest.fixture(autouse=True)
    def _integration(
        self,
        request: pytest.FixtureRequest,
        world: World,
        start_daemon: Callable[..., Daemon],
    ) -> None:
        self.world = world
        self.start_daemon = start_daemon
        if self.shared:
            self.daemon = request.getfixturevalue("shared_daemon")

    def answer(self, key: str, name: str = "postfix", daemon: Daemon | None = None) -> str:
        """What ``postmap -q KEY socketmap:...:NAME`` says, via answer_of."""
        return answer_of((daemon or self.daemon).postmap(key, name))

    def assertAnswer(
        self, key: str, expected: str, name: str = "postfix", daemon: Daemon | None = None
    ) -> None:
        self.assertEqual(self.answer(key, name, daemon), expected, f"postmap -q {key} ...:{name}")

    def poll_answers(
        self,
        key: str,
        until: str | None,
        timeout: float,
        name: str = "postfix",
        daemon: Daemon | None = None,
        interval: float = 0.25,
    ) -> list[str]:
        """
        Query every ``interval`` until the answer is ``until`` or ``timeout``
        passes (``until`` None: for the whole time); all answers seen.
        """
        seen = []
        deadline = time.monotonic() + timeout
        while True:
            seen.append(self.answer(key, name, daemon))
            if seen[-1] == until or time.monotonic() > deadline:
                return seen
            time.sleep(interval)

    def wait_for_requests(self, domain: str, timeout: float = 5.0) -> list[str]:
        """nginx's access-log lines for ``domain``'s policy host, once there is one."""
        deadline = time.monotonic() + timeout
        while not (lines := self.world.nginx.requests_for(domain)):
            if time.monotonic() > deadline:
                break
            time.sleep(0.05)
        return lines

    def resolve(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        """Ask the world's validating resolver, with the DO bit as the daemon does."""
        return self.world.unbound.query(name, rdtype, timeout)

    @staticmethod
    def ad(response: dns.message.Message) -> bool:
        """Whether the resolver vouched for the response (the AD bit)."""
        return bool(response.flags & dns.flags.AD)

    @staticmethod
    def rdata(response: dns.message.Message, rdtype: str) -> list[str]:
        """The answer section's rdata texts of one type, in order."""
        wanted = dns.rdatatype.from_text(rdtype)
        return [rd.to_text() for rrset in response.answer if rrset.rdtype == wanted for rd in rrset]
