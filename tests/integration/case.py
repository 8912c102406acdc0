"""
The base class of the integration tests: it hands each test the session's
world and a way to start daemons, and reads postmap's output back into the
one answer Postfix would act on.
"""

from __future__ import annotations

import time
from typing import Callable, Sequence

import dns.flags
import dns.message
import dns.rdatatype
import pytest
from twisted.trial.unittest import SynchronousTestCase

from .addresses import POLICY_ADDRESS, SINK_ADDRESSES
from .daemon import Daemon, PostmapResult
from .pki import Pair
from .scenarios import policy
from .servers import Site
from .smtpsink import SmtpSink
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


def owner(name: str) -> str:
    """An absolute ``.test`` name as an owner relative to the zone ``test.``."""
    assert name.endswith(".test"), name
    return name[: -len(".test")]


def add_policy_host(world: World, domain: str, body: str) -> None:
    """Serve ``mta-sts.<domain>`` from nginx, with a certificate of its own."""
    site = Site(domain, body, certificate=f"policy-{domain}")
    world.nginx.add_site(site, world.ca.issue([site.host], label=site.certificate))


class MailTestCase(IntegrationTestCase):
    """Helpers to publish a domain's DNS and policy and run its SMTP sinks."""

    def sink(self, address: str, name: str, certificate: Pair | None) -> SmtpSink:
        """An SMTP sink on ``address``:25 for this test only."""
        assert address in SINK_ADDRESSES, f"{address} is not among addresses.SINK_ADDRESSES"
        sink = SmtpSink(address, name, certificate).start()
        self.addCleanup(sink.stop)
        return sink

    def publish(self, records: dict[str, list[str]]) -> None:
        """Add records to the signed zones (owners relative to test.); removed after the test."""
        self.world.nsd.update(records)
        self.addCleanup(self.world.nsd.update, {o: [] for o in records})

    def publish_mx(
        self, domain: str, hosts: dict[str, str], tlsa: dict[str, str] | None = None
    ) -> None:
        """``domain``'s MX hosts (name -> address) in preference order, some with TLSA."""
        records: dict[str, list[str]] = {
            owner(domain): [f"MX {10 * (i + 1)} {host}." for i, host in enumerate(hosts)]
        }
        for host, address in hosts.items():
            records[owner(host)] = [f"A {address}"]
        for host, rdata in (tlsa or {}).items():
            records["_25._tcp." + owner(host)] = [f"TLSA {rdata}"]
        self.publish(records)

    def publish_sts(self, domain: str, mx: Sequence[str]) -> None:
        """An MTA-STS enforce policy for ``domain``: its TXT record and its policy host."""
        self.publish({
            "_mta-sts." + owner(domain): ['TXT "v=STSv1; id=1"'],
            "mta-sts." + owner(domain): [f"A {POLICY_ADDRESS}"],
        })
        add_policy_host(self.world, domain, policy("enforce", mx))
