"""
The Exim side proved with Debian's real Exim 4.96: ``${readsocket}`` against
the daemon's Exim listener gives each verdict, and contrib/exim's routers and
transports, included as they are shipped, make Exim deliver (or keep) mail
to STARTTLS sinks on loopback port 25 as the verdict demands.
"""

from __future__ import annotations

import re
import shutil
import tempfile
from pathlib import Path
from typing import Iterator, NamedTuple

import pytest

from .addresses import POLICY_ADDRESS
from .case import MailTestCase, add_policy_host, owner
from .daemon import Daemon
from .exim import Attempt, Exim, debian_config, ensure_exim
from .pki import tlsa_mismatch
from .scenarios import MAX_AGE, mx_of, policy
from .servers import accepts_connections, free_port, wait_until
from .smtpsink import SmtpSink
from .world import World

pytestmark = pytest.mark.integration


@pytest.fixture(scope="session")
def exim_tree(world: World) -> Path:
    """Debian's Exim, downloaded and unpacked once (see exim.ensure_exim)."""
    return ensure_exim()


class EximListener(NamedTuple):
    """A daemon serving Exim lookups on a TCP port and a unix socket."""

    daemon: Daemon
    port: int
    socket: Path


@pytest.fixture(scope="class")
def exim_listener(world: World) -> Iterator[EximListener]:
    """A daemon with its Exim listener on a TCP port and a unix socket."""
    # Outside pytest's directories, for the reason given at ``exim``.
    directory = Path(tempfile.mkdtemp(prefix="mxpolicyd-exim-socket."))
    directory.chmod(0o755)
    port, path = free_port(), directory / "exim.sock"
    daemon = world.new_daemon(None, {"exim": {"listen": [
        f"tcp:{port}:interface=127.0.0.1", f"unix:{path}:mode=666",
    ]}}).start()
    try:
        wait_until(
            lambda: path.exists() and accepts_connections("127.0.0.1", port),
            10.0,
            "the daemon's Exim listeners",
        )
        yield EximListener(daemon, port, path)
    finally:
        daemon.stop()
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture(scope="class")
def exim(world: World, exim_tree: Path, exim_listener: EximListener) -> Iterator[Exim]:
    """
    An Exim configuration with contrib/exim, asking ``exim_listener`` over
    TCP.  Its directory is outside pytest's, which a concurrent pytest run
    may make 0700, locking out Exim's unprivileged processes.
    """
    directory = Path(tempfile.mkdtemp(prefix="mxpolicyd-exim."))
    try:
        yield Exim(
            directory,
            exim_tree,
            nameserver=world.resolver[0],
            ca_file=world.ca.cert_path,
            socket=f"inet:127.0.0.1:{exim_listener.port}",
        ).setup()
    finally:
        shutil.rmtree(directory, ignore_errors=True)


class EximTestCase(MailTestCase):
    """Tests with the class's Exim configuration and daemon."""

    exim: Exim
    listener: EximListener

    @pytest.fixture(autouse=True)
    def _exim(self, exim: Exim, exim_listener: EximListener) -> None:
        self.exim = exim
        self.listener = exim_listener
        self.daemon = exim_listener.daemon

    def readsocket(self, domain: str, spec: str | None = None) -> str:
        """What ``${readsocket}`` returns for ``domain`` (FAILED on a socket error)."""
        spec = spec or self.exim.socket
        # The 4th argument replaces the reply's newline (empty means "keep it").
        (line,) = self.exim.expand("${readsocket{%s}{%s}{5s}{ }{FAILED}}" % (spec, domain))
        self.assertTrue(line.endswith(" ") or line == "FAILED", repr(line))
        return line.rstrip(" ")


def _fields(reply: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|\S+)', reply)}


class ReadsocketTests(EximTestCase):
    """``exim -be`` expansions of readsocket against the daemon, one per action."""

    def assertAction(self, domain: str, action: str) -> dict[str, str]:
        reply = self.readsocket(domain)
        fields = _fields(reply)
        self.assertEqual(fields.get("action"), action, reply)
        self.assertTrue(reply.startswith(f"action={action}"), reply)
        self.assertIn("rule", fields, reply)
        return fields

    def test_enforce(self) -> None:
        """An enforce domain: sts-enforce with the policy's mx patterns as an Exim list."""
        fields = self.assertAction("enforce.test", "sts-enforce")
        self.assertEqual(fields["mx"], ":".join(mx_of("enforce.test")))
        self.assertEqual(fields["max_age"], str(MAX_AGE))

    def test_extract(self) -> None:
        """The contrib macros' own ${extract} reads action and mx out of the reply."""
        spec = self.exim.socket
        got = self.exim.expand(
            "${extract{action}{${readsocket{%s}{enforce.test}{5s}{ }{FAILED}}}}" % spec,
            "${extract{mx}{${readsocket{%s}{enforce.test}{5s}{ }{FAILED}}}}" % spec,
        )
        self.assertEqual(got, ["sts-enforce", ":".join(mx_of("enforce.test"))])

    def test_testing(self) -> None:
        """A testing-mode domain: sts-testing, with its mx list."""
        fields = self.assertAction("testing.test", "sts-testing")
        self.assertEqual(fields["mx"], ":".join(mx_of("testing.test")))

    def test_none(self) -> None:
        """A domain with no MTA-STS record and no DANE: none, no mx."""
        fields = self.assertAction("norecord.test", "none")
        self.assertNotIn("mx", fields)

    def test_dane_only(self) -> None:
        """Every MX host with usable TLSA: dane-only."""
        self.assertAction("daneonly.test", "dane-only")

    def test_dane(self) -> None:
        """TLSA on some MX hosts only: dane."""
        self.assertAction("danesome.test", "dane")

    def test_temp(self) -> None:
        """DNSSEC bogus: temp, with a reason."""
        fields = self.assertAction("dane.bogus.test", "temp")
        self.assertTrue(fields.get("reason"), fields)

    def test_unix_socket(self) -> None:
        """The unix socket form (a path as the readsocket spec) answers the same."""
        reply = self.readsocket("enforce.test", str(self.listener.socket))
        self.assertEqual(_fields(reply).get("action"), "sts-enforce", reply)

    def test_unreachable(self) -> None:
        """No daemon at the address: the fail argument, and the contrib macro's marker."""
        dead = f"inet:127.0.0.1:{free_port()}"
        self.assertEqual(self.readsocket("enforce.test", dead), "FAILED")
        (line,) = self.exim.expand(
            "${extract{action}{MXPOLICYD_LOOKUP}}", macros={"MXPOLICYD_SOCKET": dead}
        )
        self.assertEqual(line, "unreachable")


class EximDeliveryTests(EximTestCase):
    """Real deliveries by Exim through contrib/exim's routers and transports."""

    def deliver(self, domain: str, macros: dict[str, str] | None = None) -> Attempt:
        """Send one message to ``domain``; Exim's first attempt, delivered in the foreground."""
        exim_id = self.exim.send(f"user@{domain}", macros)
        self.addCleanup(self.exim.remove_if_queued, exim_id)
        attempts = self.exim.attempts(exim_id)
        self.assertTrue(attempts, self.exim.log_tail())
        self.assertNotIn("**", [a.flag for a in attempts], self.exim.log_tail())
        return attempts[0]

    def assertDelivered(self, attempt: Attempt, sink: SmtpSink, mx: str, router: str) -> None:
        """Delivered by ``router`` over verified TLS with SNI ``mx``; the sink has it."""
        self.assertTrue(attempt.delivered, attempt.line)
        self.assertEqual(attempt.fields.get("R"), router, attempt.line)
        self.assertEqual(attempt.fields.get("H"), mx, attempt.line)
        self.assertEqual(attempt.fields.get("CV"), "yes", attempt.line)
        self.assertTrue(attempt.fields.get("X", "").startswith("TLS"), attempt.line)
        self.assertEqual(len(sink.messages), 1, sink.sessions)
        message = sink.messages[0]
        self.assertEqual(message.rcpt_to, (attempt.recipient,))
        self.assertTrue(message.tls)
        self.assertEqual(message.sni, mx)
        self.assertNotIn(attempt.message_id, self.exim.queue())

    def assertDeferred(self, attempt: Attempt, reason: str, *sinks: SmtpSink) -> None:
        """Deferred with ``reason``, still queued, and no sink got the message."""
        self.assertTrue(attempt.deferred, attempt.line)
        self.assertIn(reason, attempt.line)
        self.assertIn(attempt.message_id, self.exim.queue())
        for sink in sinks:
            self.assertEqual(sink.messages, [], sink.sessions)

    def test_enforce_valid_certificate_delivers(self) -> None:
        """sts-enforce, certificate valid for the MX name: delivered over verified TLS, SNI = MX."""
        domain, mx = "stsgood.exim.test", "mx.stsgood.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.61"})
        self.publish_sts(domain, [mx])
        sink = self.sink("127.0.0.61", mx, self.world.ca.issue([mx]))
        attempt = self.deliver(domain)
        self.assertDelivered(attempt, sink, mx, "mxpolicyd_sts")

    def test_enforce_wrong_certificate_defers(self) -> None:
        """sts-enforce, certificate for another name: TLS attempted, deferred, nothing sent."""
        domain, mx = "stswrong.exim.test", "mx.stswrong.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.62"})
        self.publish_sts(domain, [mx])
        sink = self.sink("127.0.0.62", mx, self.world.ca.issue(["other.exim.test"]))
        attempt = self.deliver(domain)
        self.assertDeferred(attempt, "R=mxpolicyd_sts T=mxpolicyd_sts_smtp", sink)
        self.assertIn("certificate verification failed", attempt.reason, attempt.line)
        self.assertTrue(any(s.tls or s.starttls for s in sink.sessions), sink.sessions)

    def test_enforce_skips_mx_outside_patterns(self) -> None:
        """*.pool matches one label only: the preferred a.b.pool and pool MX hosts are never used."""
        domain = "stspick.exim.test"
        deep, bare, good = (
            "a.b.pool.stspick.exim.test", "pool.stspick.exim.test", "mx.pool.stspick.exim.test"
        )
        self.publish_mx(domain, {deep: "127.0.0.63", bare: "127.0.0.64", good: "127.0.0.65"})
        self.publish_sts(domain, ["*.pool.stspick.exim.test"])
        certificate = self.world.ca.issue([deep, bare, good])
        sinks = [
            self.sink("127.0.0.63", deep, certificate),
            self.sink("127.0.0.64", bare, certificate),
        ]
        good_sink = self.sink("127.0.0.65", good, certificate)
        attempt = self.deliver(domain)
        self.assertDelivered(attempt, good_sink, good, "mxpolicyd_sts")
        for sink in sinks:
            self.assertEqual(sink.sessions, [], sink)

    def test_enforce_no_matching_mx_defers(self) -> None:
        """sts-enforce and no MX host matching the policy: deferred, the host never contacted."""
        domain, mx = "stsnomx.exim.test", "mx.elsewhere.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.66"})
        self.publish_sts(domain, ["mx.stsnomx.exim.test"])
        sink = self.sink("127.0.0.66", mx, self.world.ca.issue([mx]))
        attempt = self.deliver(domain)
        self.assertDeferred(attempt, "R=mxpolicyd_sts_nomatch", sink)
        self.assertIn("matches its MTA-STS policy", attempt.line)
        self.assertEqual(sink.sessions, [])

    def test_dane_only_mismatching_tlsa_defers(self) -> None:
        """dane-only, TLSA matching no key: deferred by the DANE transport, nothing sent."""
        domain, mx = "danebad.exim.test", "mx.danebad.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.67"}, tlsa={mx: tlsa_mismatch()})
        sink = self.sink("127.0.0.67", mx, self.world.ca.issue([mx]))
        attempt = self.deliver(domain)
        self.assertDeferred(attempt, "T=mxpolicyd_dane_only_smtp", sink)
        self.assertIn("certificate verification failed", attempt.reason, attempt.line)
        self.assertTrue(any(s.starttls for s in sink.sessions), sink.sessions)
        self.assertEqual(_fields(self.readsocket(domain)).get("action"), "dane-only")

    def test_dane_only_matching_tlsa_delivers(self) -> None:
        """dane-only, TLSA 3 1 1 of the sink's key: delivered over DANE-verified TLS."""
        domain, mx = "daneok.exim.test", "mx.daneok.exim.test"
        pair = self.world.ca.issue([mx])
        self.publish_mx(domain, {mx: "127.0.0.68"}, tlsa={mx: pair.tlsa()})
        sink = self.sink("127.0.0.68", mx, pair)
        attempt = self.deliver(domain)
        self.assertTrue(attempt.delivered, attempt.line)
        self.assertEqual(attempt.fields.get("R"), "mxpolicyd_dane_only", attempt.line)
        self.assertEqual(attempt.fields.get("CV"), "dane", attempt.line)
        self.assertEqual(len(sink.messages), 1, sink.sessions)
        self.assertTrue(sink.messages[0].tls)

    def test_temp_defers(self) -> None:
        """An MX host in the bogus zone: the daemon says temp, Exim defers without connecting."""
        domain, mx = "bogushost.exim.test", "mx.bogushost.exim.test"
        pair = self.world.ca.issue([mx])
        self.publish_mx(
            domain, {mx: "127.0.0.69", "mx.dlvhost.bogus.test": "127.0.0.70"},
            tlsa={mx: pair.tlsa()},
        )
        sink = self.sink("127.0.0.69", mx, pair)
        attempt = self.deliver(domain)
        self.assertDeferred(attempt, "R=mxpolicyd_defer", sink)
        self.assertIn("mxpolicyd: ", attempt.line)
        self.assertEqual(sink.sessions, [])

    def test_unreachable_defers(self) -> None:
        """No daemon answering: deferred by default, the MX host never contacted."""
        domain, mx = "unreachdefer.exim.test", "mx.unreachdefer.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.61"})
        sink = self.sink("127.0.0.61", mx, self.world.ca.issue([mx]))
        dead = {"MXPOLICYD_SOCKET": f"inet:127.0.0.1:{free_port()}"}
        attempt = self.deliver(domain, dead)
        self.assertDeferred(attempt, "R=mxpolicyd_defer", sink)
        self.assertIn("did not answer", attempt.line)
        self.assertEqual(sink.sessions, [])

    def test_unreachable_deliver_macro(self) -> None:
        """MXPOLICYD_UNREACHABLE=deliver: no verdict, so the next router delivers as usual."""
        domain, mx = "unreach.exim.test", "mx.unreach.exim.test"
        self.publish_mx(domain, {mx: "127.0.0.62"})
        sink = self.sink("127.0.0.62", mx, self.world.ca.issue([mx]))
        macros = {
            "MXPOLICYD_SOCKET": f"inet:127.0.0.1:{free_port()}",
            "MXPOLICYD_UNREACHABLE": "deliver",
        }
        attempt = self.deliver(domain, macros)
        self.assertTrue(attempt.delivered, attempt.line)
        self.assertEqual(attempt.fields.get("R"), "dnslookup", attempt.line)
        self.assertEqual(len(sink.messages), 1, sink.sessions)


class DebianConfigTests(EximTestCase):
    """
    The fragments installed into Debian's own configuration, split and
    unsplit, as contrib/exim/README.md says: update-exim4.conf generates
    it, Exim accepts it, and ``exim -bt`` routes each verdict to its router.
    """

    def routes(self, split: bool) -> dict[str, str]:
        """``exim -bt`` for one domain per verdict, through Debian's generated config."""
        directory = self.exim.directory / ("split" if split else "unsplit")
        directory.mkdir()
        local = (
            f"MXPOLICYD_SOCKET = {self.exim.socket}\n"
            f"MXPOLICYD_TLS_VERIFY_CERTIFICATES = {self.exim.ca_file}\n"
            # Debian ignores loopback MX hosts; the test's are on 127.0.0.6x.
            "ROUTER_DNSLOOKUP_IGNORE_TARGET_HOSTS = <; 0.0.0.0 ; 127.0.0.0/27\n"
        )
        config = debian_config(self.exim, directory, local, split=split)
        check = self.exim.command("-bV", config=config)
        self.assertEqual(check.returncode, 0, check.stdout + check.stderr)
        routed = {}
        for domain in self.domains:
            r = self.exim.command("-bt", f"user@{domain}", config=config)
            routed[domain] = r.stdout + r.stderr
        return routed

    def setUp(self) -> None:
        sts, dane, plain = "stsdeb.exim.test", "danedeb.exim.test", "plaindeb.exim.test"
        records = {
            owner(sts): [f"MX 10 mx.{sts}."], owner(f"mx.{sts}"): ["A 127.0.0.61"],
            "_mta-sts." + owner(sts): ['TXT "v=STSv1; id=1"'],
            "mta-sts." + owner(sts): [f"A {POLICY_ADDRESS}"],
            owner(dane): [f"MX 10 mx.{dane}."], owner(f"mx.{dane}"): ["A 127.0.0.62"],
            "_25._tcp." + owner(f"mx.{dane}"): [f"TLSA {tlsa_mismatch()}"],
            owner(plain): [f"MX 10 mx.{plain}."], owner(f"mx.{plain}"): ["A 127.0.0.63"],
        }
        self.world.nsd.update(records)
        self.addCleanup(self.world.nsd.update, {owner: [] for owner in records})
        add_policy_host(self.world, sts, policy("enforce", [f"mx.{sts}"]))
        self.domains = [sts, dane, plain, "dane.bogus.test"]
        self.expected = {
            sts: f"router = mxpolicyd_sts, transport = mxpolicyd_sts_smtp\n"
                 f"  host mx.{sts} [127.0.0.61]",
            dane: f"router = mxpolicyd_dane_only, transport = mxpolicyd_dane_only_smtp\n"
                  f"  host mx.{dane} [127.0.0.62]",
            plain: f"router = dnslookup, transport = remote_smtp\n  host mx.{plain} [127.0.0.63]",
            "dane.bogus.test": "cannot be resolved at this time: mxpolicyd: ",
        }

    def assertRoutes(self, routed: dict[str, str]) -> None:
        for domain, expected in self.expected.items():
            self.assertIn(expected, routed[domain], routed[domain])

    def test_split(self) -> None:
        """Split config (conf.d files): generated, accepted, each verdict to its router."""
        self.assertRoutes(self.routes(split=True))

    def test_unsplit(self) -> None:
        """Unsplit config (template snippets, localmacros): the same routes."""
        self.assertRoutes(self.routes(split=False))


