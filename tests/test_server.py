"""
Tests for L{mxpolicyd.answers.postfix}: the lookup path from socketmap bytes to reply
bytes, with the real codec, cache and MTA-STS evaluator over fake DNS/HTTPS.
"""

from __future__ import annotations

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.exim import EximResponder
from mxpolicyd.answers.postfix import PostfixResponder
from mxpolicyd.answers.profiles import BUILTIN_PROFILES
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.evidence.evaluator import Evaluator
from mxpolicyd.evidence.sts_discovery import StsEvaluator
from mxpolicyd.protocols.socketmap import SocketmapFactory, netstring

from .fakes import TXT, FakeFetcher, FakeResolver, policy, txt

ENFORCE = b"OK secure match=mx1.example.test:.example.net servername=hostname"


class EnforceWorld(SynchronousTestCase):
    """example.test publishes an enforce policy; the cache evaluates it over fakes."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.resolver = FakeResolver()
        self.fetcher = FakeFetcher()
        self.resolver.answers[("_mta-sts.example.test", TXT)] = txt("v=STSv1; id=1", ttl=600)
        self.fetcher.bodies["example.test"] = policy("enforce")
        sts = StsEvaluator(self.clock, self.resolver, self.fetcher)
        self.cache = PolicyCache(self.clock, Evaluator(sts), settings=CacheSettings(deadline=2.0))


class PostfixResponderTests(EnforceWorld):
    def setUp(self) -> None:
        super().setUp()
        self.responder = PostfixResponder(self.clock, self.cache, BUILTIN_PROFILES)
        # These tests move the clock by days over one connection: no idle close.
        factory = SocketmapFactory(self.responder.lookup, self.clock, idle_timeout=1e9)
        self.proto = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        self.transport = StringTransport()
        self.proto.makeConnection(self.transport)

    def ask(self, key: bytes, name: bytes = b"postfix") -> bytes:
        self.transport.clear()
        self.proto.dataReceived(netstring(name + b" " + key))
        data = self.transport.value()
        head, _, rest = data.partition(b":")
        self.assertEqual(len(rest), int(head) + 1, data)
        return rest[:-1]

    def test_enforce(self) -> None:
        """An enforce domain is answered with the secure policy."""
        self.assertEqual(self.ask(b"example.test"), ENFORCE)

    def test_key_folding(self) -> None:
        """Upper case and a trailing dot reach the same domain, looked up once."""
        self.assertEqual(self.ask(b"EXAMPLE.test."), ENFORCE)
        self.assertEqual(self.ask(b"example.test"), ENFORCE)
        self.assertEqual(self.resolver.queries, [("_mta-sts.example.test", TXT)])

    def test_u_label(self) -> None:
        """A U-label key is looked up under its A-label."""
        self.assertEqual(self.ask("bücher.test".encode()), b"NOTFOUND ")
        self.assertEqual(self.resolver.queries, [("_mta-sts.xn--bcher-kva.test", TXT)])

    def test_not_plain_domains(self) -> None:
        """Parent, bracketed, host:port, address and junk keys are NOTFOUND with no lookup."""
        keys = [
            b".example.test", b"[mx.example.test]", b"[mx.example.test]:25",
            b"example.test:25", b"192.0.2.1", b"[192.0.2.1]", b"2001:db8::1",
            b"\xff\xfe.test", b"a" * 64 + b".test", b"exa mple.test", b"example..test",
            b"under_score.test",
        ]
        for key in keys:
            self.assertEqual(self.ask(key), b"NOTFOUND ", key)
        self.assertEqual(self.resolver.queries, [])

    def test_unknown_map(self) -> None:
        """An unknown socketmap name gets PERM naming it."""
        self.assertEqual(self.ask(b"example.test", b"nosuch"), b"PERM unknown socketmap name nosuch")

    def test_profiles(self) -> None:
        """The map name selects the profile: the TLSRPT map adds its attributes."""
        self.ask(b"example.test")
        reply = self.ask(b"example.test", b"postfix-tlsrpt")
        self.assertTrue(reply.startswith(ENFORCE + b" policy_type=sts policy_domain=example.test"))

    def test_memo_follows_changes(self) -> None:
        """After a re-check changes the policy, the new answer is served."""
        self.assertEqual(self.ask(b"example.test"), ENFORCE)
        self.resolver.answers[("_mta-sts.example.test", TXT)] = txt("v=STSv1; id=2")
        self.fetcher.bodies["example.test"] = policy("none", mx=())
        self.clock.advance(601)
        # Stale while revalidate: the fakes answer at once, so the re-check
        # has already finished when this lookup's reply is rendered.
        self.ask(b"example.test")
        self.assertEqual(self.ask(b"example.test"), b"NOTFOUND ")
        self.assertEqual(len(self.fetcher.fetches), 2)

    def test_due_domain_answered_while_recheck_pending(self) -> None:
        """A due domain is answered from memory while its one re-check waits on DNS, then with the outcome."""
        self.assertEqual(self.ask(b"example.test"), ENFORCE)
        pending: Deferred[object] = Deferred()
        self.resolver.answers[("_mta-sts.example.test", TXT)] = pending
        self.clock.advance(601)
        for _ in range(5):
            self.assertEqual(self.ask(b"example.test"), ENFORCE)
        self.assertEqual(self.resolver.queries.count(("_mta-sts.example.test", TXT)), 2)
        self.fetcher.bodies["example.test"] = policy("none", mx=())
        pending.callback(txt("v=STSv1; id=2", ttl=600))
        self.assertEqual(self.ask(b"example.test"), b"NOTFOUND ")

    def test_cached_lookup_does_no_io(self) -> None:
        """Repeated lookups of a cached domain query nothing more."""
        for _ in range(100):
            self.assertEqual(self.ask(b"example.test"), ENFORCE)
        self.assertEqual(len(self.resolver.queries), 1)
        self.assertEqual(len(self.fetcher.fetches), 1)

    def test_dns_failure_without_cache(self) -> None:
        """A DNS failure on a never-seen domain answers NOTFOUND (deliver as if no MTA-STS)."""
        self.resolver.fail("_mta-sts.dead.test")
        self.assertEqual(self.ask(b"dead.test"), b"NOTFOUND ")

    def test_dns_failure_with_cache(self) -> None:
        """A DNS failure after caching keeps answering the cached policy."""
        self.assertEqual(self.ask(b"example.test"), ENFORCE)
        self.resolver.fail("_mta-sts.example.test")
        self.clock.advance(601)
        for _ in range(3):
            self.assertEqual(self.ask(b"example.test"), ENFORCE)
            self.clock.advance(61)
        self.assertGreater(len(self.resolver.queries), 2)


class EximResponderTests(EnforceWorld):
    def setUp(self) -> None:
        super().setUp()
        self.responder = EximResponder(self.cache)

    def test_enforce(self) -> None:
        """An enforce domain gets sts-enforce with its patterns as an Exim list."""
        d = self.responder.lookup(b"EXAMPLE.test")
        assert isinstance(d, Deferred)
        self.assertTrue(self.successResultOf(d).startswith(
            b'action=sts-enforce mx="mx1.example.test:*.example.net" max_age=86400'))
        cached = self.responder.lookup(b"example.test")
        assert isinstance(cached, bytes)
        self.assertTrue(cached.startswith(b"action=sts-enforce"))

    def test_junk_key(self) -> None:
        """A key that is not a plain domain gets action=none with no lookup."""
        self.assertEqual(self.responder.lookup(b"[192.0.2.1]"),
                         b'action=none rule="not a plain domain name: no lookup"\n')
        self.assertEqual(self.resolver.queries, [])
