"""
The ``postfix-tlsrpt`` profile judged by Debian trixie's Postfix 3.10 (see
trixie.py): postmap accepts its reply, and smtp(8), given
``policy_type=sts`` with ``mx_host_pattern``s, never connects to an MX host
outside the patterns (``smtp_tls_enforce_sts_mx_patterns``, Postfix >= 3.10.5).

Marked ``trixie``: the first run builds the trixie tree (about a minute);
``tests/run -m trixie`` runs only these.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Iterator

import pytest

from .postfix import Postfix
from .scenarios import tlsrpt_answer
from .servers import free_port
from .smtpsink import SmtpSink
from .test_delivery import DeliveryTestCase, delivery_daemon  # noqa: F401 (fixture)
from .trixie import TrixiePostfix, ensure_tree, in_tree, postfix_version, tree_path
from .world import World

pytestmark = [pytest.mark.integration, pytest.mark.trixie]

MAP = "postfix-tlsrpt"


@pytest.fixture(scope="module")
def trixie_tree(world: World) -> Path:
    """The cached trixie tree, built if missing; its Postfix must know the STS MX patterns."""
    try:
        tree = ensure_tree(tree_path())
    except RuntimeError as e:
        pytest.fail(str(e))
    r = in_tree(tree, ["/usr/sbin/postconf", "-d", "smtp_tls_enforce_sts_mx_patterns"])
    assert r.stdout.strip() == "smtp_tls_enforce_sts_mx_patterns = yes", (
        f"trixie's Postfix {postfix_version(tree)} lacks smtp_tls_enforce_sts_mx_patterns: "
        f"{r.stdout}{r.stderr}"
    )
    return tree


@pytest.fixture(scope="module")
def postfix(world: World, trixie_tree: Path) -> Iterator[Postfix]:
    """
    Overrides conftest's instance for this module: Postfix 3.10 in the trixie
    tree, asking the ``postfix-tlsrpt`` map over TCP, smtp(8) chrooted.
    """
    base = trixie_tree / "var" / "tmp" / "mxpolicyd-tests"
    base.mkdir(parents=True, exist_ok=True)
    directory = base / f"postfix-{free_port()}"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    ca_file = directory / "ca.pem"
    shutil.copyfile(world.ca.cert_path, ca_file)
    address, port = world.resolver
    assert port == 53, f"smtp(8) reads resolv.conf, which cannot name port {port}"
    instance = TrixiePostfix(
        trixie_tree,
        directory,
        ca_file=ca_file,
        nameserver=address,
        policy_port=free_port(),
        policy_socket=directory / "policy" / "mxpolicyd.sock",
        map_name=MAP,
    )
    instance.start()
    try:
        yield instance
    finally:
        instance.stop()
        shutil.rmtree(directory, ignore_errors=True)


class Postfix310Tests(DeliveryTestCase):
    """What Postfix 3.10 makes of the TLSRPT profile's enforce answers."""

    def test_version(self) -> None:
        """The tree's Postfix is 3.10 or newer, the first with TLSRPT policy attributes."""
        assert isinstance(self.postfix, TrixiePostfix)
        version = postfix_version(self.postfix.tree)
        major, minor = (int(x) for x in version.split(".")[:2])
        self.assertGreaterEqual((major, minor), (3, 10), version)

    def test_postmap_accepts_tlsrpt_reply(self) -> None:
        """postmap -q of Postfix 3.10 prints the whole TLSRPT reply for an enforce domain."""
        domain, mx = "pm310.deliver.test", "mx.pm310.deliver.test"
        self.publish_mx(domain, {mx: "127.0.0.61"})
        self.publish_sts(domain, [mx])
        self.daemon.postmap(domain, MAP)  # the first lookup may still be pending
        assert isinstance(self.postfix, TrixiePostfix)
        table = f"socketmap:inet:127.0.0.1:{self.postfix.policy_port}:{MAP}"
        deadline = 20
        for _ in range(deadline * 4):
            r = self.postfix.command(
                ["/usr/sbin/postmap", "-c", str(self.postfix.config_dir), "-q", domain, table],
                check=False,
            )
            if r.returncode == 0:
                break
            time.sleep(0.25)
        self.assertEqual(
            (r.returncode, r.stdout, r.stderr),
            (0, f"{tlsrpt_answer(domain, [mx])}\n", ""),
        )

    def two_mx(self, label: str) -> tuple[str, str, str, SmtpSink, SmtpSink]:
        """
        An enforce domain whose preferred MX (127.0.0.62) lies outside the
        policy's pattern ``*.in.<domain>`` and whose other MX (127.0.0.63)
        matches it. The outside host's certificate is valid for its own name
        and for a name under ``.in.<domain>``, so the certificate check alone
        (``match=.in.<domain>``, all Postfix <= 3.10.4 does) would accept it.
        """
        domain = f"{label}.deliver.test"
        good, outside = f"mx.in.{domain}", f"mx.out.{domain}"
        owner = domain[: -len(".test")]
        self.publish({
            owner: [f"MX 10 {outside}.", f"MX 20 {good}."],
            f"mx.out.{owner}": ["A 127.0.0.62"],
            f"mx.in.{owner}": ["A 127.0.0.63"],
        })
        self.publish_sts(domain, [f"*.in.{domain}"])
        sink_out = self.sink(
            "127.0.0.62", outside, self.world.ca.issue([outside, f"x.in.{domain}"])
        )
        sink_in = self.sink("127.0.0.63", good, self.world.ca.issue([good]))
        self.daemon.postmap(domain, MAP)
        return domain, good, outside, sink_in, sink_out

    def test_mx_outside_patterns_is_skipped(self) -> None:
        """An MX outside mx_host_pattern is never connected to; the matching MX gets the mail."""
        domain, good, outside, sink_in, sink_out = self.two_mx("skip310")
        delivery = self.deliver(domain)
        self.assertSent(delivery, sink_in, good)
        self.assertEqual(sink_out.sessions, [], "smtp(8) connected to the MX outside the patterns")
        self.assertIn(
            f"warning: MX name '{outside}' does not match STS MX pattern for '{domain}'",
            "\n".join(delivery.log),
        )

    def test_patterns_off_uses_outside_mx(self) -> None:
        """Control: with smtp_tls_enforce_sts_mx_patterns=no the same answer lets the outside MX have it."""
        domain, good, outside, sink_in, sink_out = self.two_mx("skipoff310")
        delivery = self.deliver(domain, transport=TrixiePostfix.PATTERNS_OFF)
        self.assertSent(delivery, sink_out, outside)
        self.assertEqual(sink_in.sessions, [])

    def test_pattern_matching_mx_delivers(self) -> None:
        """A single MX matching a wildcard pattern: delivered over verified TLS with SNI."""
        domain, mx = "wild310.deliver.test", "mx1.wild310.deliver.test"
        self.publish_mx(domain, {mx: "127.0.0.64"})
        self.publish_sts(domain, [f"*.{domain}"])
        sink = self.sink("127.0.0.64", mx, self.world.ca.issue([mx]))
        self.daemon.postmap(domain, MAP)
        delivery = self.deliver(domain)
        self.assertSent(delivery, sink, mx)
        self.assertEqual(
            self.answer(domain, MAP), tlsrpt_answer(domain, [f"*.{domain}"])
        )
