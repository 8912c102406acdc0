"""
Tests for mxpolicyd.evidence.names: which socketmap keys get a lookup, under which name.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TypeVar

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.names import is_valid_hostname, normalise

A = TypeVar("A")
R = TypeVar("R")

LABEL_63 = "a" * 63
# Four labels, 63 + 63 + 63 + 61 octets and three dots: exactly 253 octets.
NAME_253 = ".".join([LABEL_63, "b" * 63, "c" * 63, "d" * 61])
NAME_254 = ".".join([LABEL_63, "b" * 63, "c" * 63, "d" * 62])


def mismatches(
    function: Callable[[A], R], table: Sequence[tuple[A, R]]
) -> list[tuple[A, R, R]]:
    """Every (input, got, expected) row of `table` that `function` gets wrong."""
    wrong = []
    for argument, expected in table:
        got = function(argument)
        if got != expected:
            wrong.append((argument, got, expected))
    return wrong


class NormaliseTests(SynchronousTestCase):
    """normalise() turns a Postfix key into the cache key, or refuses it."""

    def test_plain_ascii(self) -> None:
        """ASCII domains fold to lower case and lose one trailing dot."""
        table = [
            (b"example.test", "example.test"),
            (b"Mail.EXAMPLE.Test", "mail.example.test"),
            (b"example.test.", "example.test"),
            (b"EXAMPLE.TEST.", "example.test"),
            (b"a.b", "a.b"),
            (b"a-b.example.test", "a-b.example.test"),
            (b"123.example.test", "123.example.test"),
            (b"example.x1", "example.x1"),
            # Hyphens in positions 3 and 4 are fine in a host name.
            (b"r3--sn-abc.example.test", "r3--sn-abc.example.test"),
            (b"xn--bcher-kva.example", "xn--bcher-kva.example"),
            (b"XN--BCHER-KVA.Example", "xn--bcher-kva.example"),
            (b"example.xn--p1ai", "example.xn--p1ai"),
        ]
        self.assertEqual(mismatches(normalise, table), [])

    def test_u_labels(self) -> None:
        """U-labels in any case map to A-labels with UTS 46."""
        table = [
            ("bücher.example".encode(), "xn--bcher-kva.example"),
            ("BÜCHER.example".encode(), "xn--bcher-kva.example"),
            ("Bücher.Example.".encode(), "xn--bcher-kva.example"),
            ("mail.bücher.test".encode(), "mail.xn--bcher-kva.test"),
            # Non-transitional processing: sharp s stays, it is not "ss".
            ("straße.test".encode(), "xn--strae-oqa.test"),
            # Ideographic and fullwidth full stops separate labels.
            ("bücher\u3002example".encode(), "xn--bcher-kva.example"),
            ("ｂücher．example".encode(), "xn--bcher-kva.example"),
            # ASCII labels beside a U-label keep the LDH rules only.
            ("ab--cd.bücher.test".encode(), "ab--cd.xn--bcher-kva.test"),
            # A label of non-basic code points only: no "-" delimiter.
            ("晜晞.test".encode(), "xn--bkve.test"),
            (b"XN--BKVE.test", "xn--bkve.test"),
        ]
        self.assertEqual(mismatches(normalise, table), [])

    def test_lengths(self) -> None:
        """Labels up to 63 octets and names up to 253 octets are accepted."""
        table = [
            (f"{LABEL_63}.test".encode(), f"{LABEL_63}.test"),
            (f"{'a' * 64}.test".encode(), None),
            (NAME_253.encode(), NAME_253),
            ((NAME_253 + ".").encode(), NAME_253),
            (NAME_254.encode(), None),
            ((NAME_254 + ".").encode(), None),
            # The A-label form is what counts: 60 u-umlauts make a 63+ label.
            (("ü" * 60 + ".test").encode(), None),
            (("ü" * 600 + ".test").encode(), None),
            # UTS 46 ignores soft hyphens, but keys over 1 kB are refused
            # before mapping: they could not fit in 253 octets anyway.
            (("\u00ad" * 10 + "bücher.test").encode(), "xn--bcher-kva.test"),
            (("\u00ad" * 600 + "bücher.test").encode(), None),
            (b"a." * 2000 + b"test", None),
        ]
        self.assertEqual(mismatches(normalise, table), [])

    def test_not_a_domain(self) -> None:
        """Keys that cannot have a policy of their own get None."""
        table: list[tuple[bytes, str | None]] = [
            (b"", None),
            (b".", None),
            (b"..", None),
            # Postfix's parent-domain probes (RFC 8461 s3.4 forbids them).
            (b".example.test", None),
            (b".test", None),
            # Bracketed next-hops and ports.
            (b"[mail.example.test]", None),
            (b"[mail.example.test]:25", None),
            (b"mail.example.test:25", None),
            (b"[192.0.2.1]", None),
            (b"[ipv6:2001:db8::1]", None),
            # Address literals.
            (b"192.0.2.1", None),
            (b"192.0.2.1.", None),
            (b"2001:db8::1", None),
            (b"::1", None),
            # All-numeric TLD.
            (b"example.123", None),
            # Single label: no MTA-STS at a TLD or for a local alias.
            (b"example", None),
            (b"localhost", None),
            (b"localhost.", None),
            # Dots.
            (b"example.test..", None),
            (b"a..example.test", None),
            # Not LDH.
            (b"_mta-sts.example.test", None),
            (b"mail_1.example.test", None),
            (b"-mail.example.test", None),
            (b"mail-.example.test", None),
            (b"example.-test", None),
            (b"*.example.test", None),
            (b"user@example.test", None),
            (b"example.test/", None),
            # Whitespace and control characters.
            (b" example.test", None),
            (b"example.test ", None),
            (b"exa mple.test", None),
            (b"exa\tmple.test", None),
            (b"example.test\n", None),
            (b"example.test\r\n", None),
            (b"example.test\x00", None),
            (b"\x7fexample.test", None),
            # A-labels that are not valid Punycode.
            (b"xn--zz.example", None),
            (b"xn--.example", None),
            # Non-canonical Punycode: an empty basic part still delimited
            # by "-" decodes to the U-label of xn--bkve (found by fuzzing;
            # idna 3.3 accepts it, newer releases do not).
            (b"xn---bkve.ee", None),
            (b"mail.XN---BKVE.example", None),
        ]
        self.assertEqual(mismatches(normalise, table), [])

    def test_bad_unicode(self) -> None:
        """Bad UTF-8 and names IDNA refuses get None, never an exception."""
        table: list[tuple[bytes, str | None]] = [
            (b"\xff\xfe", None),
            (b"b\xfccher.example", None),  # Latin-1, not UTF-8
            (b"\xc3\x28.example", None),  # truncated sequence
            (b"\xed\xa0\x80.example", None),  # encoded surrogate
            (".bücher.example".encode(), None),
            ("bücher.example..".encode(), None),
            ("bücher..example".encode(), None),
            ("[bücher.example]".encode(), None),
            ("bücher.example:25".encode(), None),
            ("bücher_x.example".encode(), None),
            ("bücher.123".encode(), None),
            ("bücher".encode(), None),
            ("bücher.example ".encode(), None),
            ("bücher\u00a0.example".encode(), None),  # no-break space
            ("bücher\u3000example".encode(), None),  # ideographic space
            ("bücher\u2028.example".encode(), None),  # line separator
            ("bücher.example\u0085".encode(), None),  # C1 control (NEL)
            ("☃.example".encode(), None),  # IDNA2008 disallows symbols
            ("xn--zz.bücher.example".encode(), None),
        ]
        self.assertEqual(mismatches(normalise, table), [])

    @settings(deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes(self, key: bytes) -> None:
        """Arbitrary bytes never raise, and any result is a canonical name."""
        self.assertCanonical(key, normalise(key))

    @settings(deadline=None)
    @given(
        st.lists(
            st.text(
                alphabet="aZ09-_.:[] \u00fc\u00dc\u00df\u3002\uff0e\u2603\u200b",
                min_size=0,
                max_size=12,
            ),
            min_size=1,
            max_size=5,
        )
    )
    def test_domain_like_text(self, parts: list[str]) -> None:
        """Near-domain UTF-8 keys never raise and normalise idempotently."""
        key = ".".join(parts).encode("utf-8")
        self.assertCanonical(key, normalise(key))

    def assertCanonical(self, key: bytes, result: str | None) -> None:
        """Check the properties every non-None result must have."""
        if result is None:
            return
        self.assertTrue(is_valid_hostname(result), (key, result))
        self.assertIn(".", result)
        self.assertEqual(result, result.lower())
        self.assertEqual(normalise(result.encode("ascii")), result, key)
        self.assertEqual(normalise(result.upper().encode("ascii") + b"."), result)


class IsValidHostnameTests(SynchronousTestCase):
    """is_valid_hostname() applies the LDH rules to an A-label name."""

    def test_table(self) -> None:
        """LDH, label and name lengths, no address literal, no wildcard."""
        table = [
            ("mail.example.test", True),
            ("Mail.Example.Test", True),
            ("xn--bcher-kva.example", True),
            # Unlike normalise, a single label is a valid host name.
            ("localhost", True),
            ("a", True),
            (f"{LABEL_63}.test", True),
            (f"{'a' * 64}.test", False),
            (NAME_253, True),
            (NAME_254, False),
            ("", False),
            ("mail.example.test.", False),
            (".example.test", False),
            ("a..b", False),
            ("*.example.test", False),
            ("-a.test", False),
            ("a-.test", False),
            ("a_b.test", False),
            ("a b.test", False),
            ("192.0.2.1", False),
            ("example.123", False),
            ("bücher.example", False),
            ("\u212aelvin.test", False),  # KELVIN SIGN case-folds to "k"
            ("mail.example.test\n", False),
        ]
        self.assertEqual(mismatches(is_valid_hostname, table), [])
