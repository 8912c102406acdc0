"""
Tests for mxpolicyd.evidence.sts: RFC 8461 TXT record and policy parsing, MX patterns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.answers.render import postfix_match
from mxpolicyd.evidence.names import is_valid_hostname
from mxpolicyd.evidence.sts import (
    MAX_AGE_LIMIT,
    MAX_POLICY_SIZE,
    StsError,
    StsPolicy,
    StsRecord,
    mx_matches,
    parse_policy,
    parse_txt,
)


def outcome(function: Callable[[Any], Any], argument: Any) -> Any:
    """The result of `function`, or ("error", kind) if it raised StsError."""
    try:
        return function(argument)
    except StsError as e:
        return ("error", e.kind)


def mismatches(
    function: Callable[[Any], Any], table: Sequence[tuple[Any, Any]]
) -> list[tuple[Any, Any, Any]]:
    """Every (input, got, expected) row of `table` that `function` gets wrong."""
    wrong = []
    for argument, expected in table:
        got = outcome(function, argument)
        if got != expected:
            wrong.append((argument, got, expected))
    return wrong


def error_of(function: Callable[[Any], Any], argument: Any) -> StsError:
    """The StsError that `function(argument)` raises."""
    try:
        function(argument)
    except StsError as e:
        return e
    raise AssertionError(f"no StsError for {argument!r}")


def policy(*lines: str, newline: str = "\n") -> bytes:
    """A policy body from its lines, each terminated by `newline`."""
    return "".join(line + newline for line in lines).encode("utf-8")


HEAD = ("version: STSv1", "mode: enforce", "max_age: 604800")
ENFORCE_MAIL = StsPolicy("enforce", 604800, ("mail.example.test",))

INVALID_RECORD = ("error", "invalid-record")
NO_RECORD = ("error", "no-record")
MULTIPLE_RECORDS = ("error", "multiple-records")
POLICY_SYNTAX = ("error", "policy-syntax")


class StsErrorTests(SynchronousTestCase):
    """StsError carries a kind and a loggable message."""

    def test_attributes(self) -> None:
        """kind and message are kept, str() is the message, and it is a ValueError."""
        e = StsError("no-record", "no TXT record")
        self.assertEqual(
            (e.kind, e.message, str(e)),
            ("no-record", "no TXT record", "no TXT record"),
        )
        self.assertIsInstance(e, ValueError)

    def test_messages_are_one_ascii_line(self) -> None:
        """Hostile input is quoted, escaped and truncated in messages."""
        hostile: list[tuple[Callable[[Any], Any], Any]] = [
            (parse_txt, [[b"v=STSv1; id=abc; f\xc3\xa9=1"]]),
            (parse_txt, [[b"v=STSv1; id=" + b"x\n" * 200]]),
            (parse_policy, policy(*HEAD, "mx: b\u00fccher.example")),
            (parse_policy, policy(*HEAD[:2], "max_age: \u2603\r\r" + "9" * 500)),
            (parse_policy, policy("version: STSv1\x1b[31m" + "x" * 500)),
            (parse_policy, b"\xff" * 100),
            (StsPolicy.from_json, {"mode": "\n" * 200}),
            # Every character escaped to ten: bounded after escaping.
            (parse_policy, policy("mx: " + "\u2603" * 100)),
        ]
        for function, argument in hostile:
            message = error_of(function, argument).message
            self.assertTrue(message.isascii(), message)
            self.assertTrue(message.isprintable(), message)
            self.assertLess(len(message), 160, message)


class ParseTxtTests(SynchronousTestCase):
    """parse_txt() picks the one STS record from the _mta-sts TXT RRset."""

    def test_valid(self) -> None:
        """Valid records yield their id; strings join without separator."""
        table = [
            (
                [[b"v=STSv1; id=20160831085700Z;"]],
                StsRecord("20160831085700Z", "v=STSv1; id=20160831085700Z;"),
            ),
            (
                [[b"v=STSv1; id=2016", b"0831085700Z"]],
                StsRecord("20160831085700Z", "v=STSv1; id=20160831085700Z"),
            ),
            (
                [[b"v=STSv1;", b" id=abc"]],
                StsRecord("abc", "v=STSv1; id=abc"),
            ),
            ([[b"v=STSv1;id=abc"]], StsRecord("abc", "v=STSv1;id=abc")),
            # *WSP ";" *WSP, with spaces and tabs, trailing delimiter.
            ([[b"v=STSv1 ; id=abc ;"]], StsRecord("abc", "v=STSv1 ; id=abc ;")),
            ([[b"v=STSv1\t;\tid=abc"]], StsRecord("abc", "v=STSv1\t;\tid=abc")),
            ([[b"v=STSv1; id=abc;  "]], StsRecord("abc", "v=STSv1; id=abc;  ")),
            # Trailing whitespace without a delimiter is tolerated.
            ([[b"v=STSv1; id=abc  "]], StsRecord("abc", "v=STSv1; id=abc  ")),
            # 32 characters is the longest id.
            (
                [[b"v=STSv1; id=" + b"a1" * 16]],
                StsRecord("a1" * 16, "v=STSv1; id=" + "a1" * 16),
            ),
        ]
        self.assertEqual(mismatches(parse_txt, table), [])

    def test_extensions(self) -> None:
        """Extension fields are allowed anywhere after the version and ignored."""
        table = [
            ([[b"v=STSv1; id=abc; foo=bar"]], "abc"),
            ([[b"v=STSv1; ext=1; id=abc"]], "abc"),
            ([[b"v=STSv1; id=abc; x_y.z-1=a:b<>/?!~"]], "abc"),
            ([[b"v=STSv1; id=abc; " + b"n" * 32 + b"=1"]], "abc"),
            # Names are case-sensitive: ID= is an extension, id= the id.
            ([[b"v=STSv1; ID=other; id=abc"]], "abc"),
            # Duplicate id: the first one counts.
            ([[b"v=STSv1; id=first; id=second"]], "first"),
        ]
        self.assertEqual(
            mismatches(lambda records: parse_txt(records).id, table), []
        )

    def test_invalid(self) -> None:
        """A malformed STS record is invalid-record."""
        table = [
            ([[b"v=STSv1"]], INVALID_RECORD),
            ([[b"v=STSv1;"]], INVALID_RECORD),
            ([[b"v=STSv1 ;  "]], INVALID_RECORD),
            ([[b"v=STSv1; id="]], INVALID_RECORD),
            ([[b"v=STSv1; id=" + b"a" * 33]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc-123"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc!"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc.def"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc def"]], INVALID_RECORD),
            ([[b"v=STSv1; ID=abc"]], INVALID_RECORD),
            ([[b"v=STSv1; foo=bar"]], INVALID_RECORD),
            # A later id must be well-formed too.
            ([[b"v=STSv1; id=abc; id=!"]], INVALID_RECORD),
            # No delimiter after the version.
            ([[b"v=STSv1 id=abc"]], INVALID_RECORD),
            # Malformed fields.
            ([[b"v=STSv1; id=abc; foo"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; foo="]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; =bar"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; foo=a=b"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; foo=a b"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; _foo=1"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc; " + b"n" * 33 + b"=1"]], INVALID_RECORD),
            ([[b"v=STSv1;; id=abc"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc;;"]], INVALID_RECORD),
            # Not US-ASCII, or control characters.
            ([[b"v=STSv1; id=abc; f\xc3\xa9=1"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc\xff"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc\x00"]], INVALID_RECORD),
            ([[b"v=STSv1; id=abc\n"]], INVALID_RECORD),
        ]
        self.assertEqual(mismatches(parse_txt, table), [])

    def test_discarded(self) -> None:
        """Records not starting v=STSv1 are discarded before counting."""
        table = [
            ([], NO_RECORD),
            ([[]], NO_RECORD),
            ([[b""]], NO_RECORD),
            ([[b"v=spf1 -all"]], NO_RECORD),
            ([[b"v=STSv10; id=abc"]], NO_RECORD),
            ([[b"V=STSv1; id=abc"]], NO_RECORD),
            ([[b" v=STSv1; id=abc"]], NO_RECORD),
            ([[b"id=abc; v=STSv1"]], NO_RECORD),
            ([[b"\xff\xfe garbage"]], NO_RECORD),
            ([[b"v=spf1 -all"], [b"v=STSv1; id=abc"]], "abc"),
            ([[b"v=STSv1; id=abc"], [b"google-site-verification=x"]], "abc"),
            ([[b"v=STSv1; id=abc"], [b"v=STSv1; id=def"]], MULTIPLE_RECORDS),
            ([[b"v=STSv1; id=abc"], [b"v=STSv1; id=abc"]], MULTIPLE_RECORDS),
            # Counting comes before validation.
            ([[b"v=STSv1; id=abc"], [b"v=STSv1"]], MULTIPLE_RECORDS),
        ]
        self.assertEqual(
            mismatches(lambda records: parse_txt(records).id, table), []
        )

    def test_accepts_tuples(self) -> None:
        """dnspython's rdata.strings (a tuple of bytes) is accepted as is."""
        record = parse_txt((tuple([b"v=STSv1; ", b"id=abc"]),))
        self.assertEqual(record, StsRecord("abc", "v=STSv1; id=abc"))

    @settings(deadline=None)
    @given(st.lists(st.lists(st.binary(max_size=40), max_size=3), max_size=3))
    def test_arbitrary_records(self, records: list[list[bytes]]) -> None:
        """Any TXT RRset yields a record with a valid id or an StsError."""
        sts = [[b"v=STSv1; "] + strings for strings in records]
        for rrset in (records, sts):
            try:
                record = parse_txt(rrset)
            except StsError as e:
                self.assertIn(
                    e.kind, {"no-record", "multiple-records", "invalid-record"}
                )
            else:
                self.assertTrue(record.id.isalnum() and record.id.isascii())
                self.assertLessEqual(len(record.id), 32)


class ParsePolicyTests(SynchronousTestCase):
    """parse_policy() validates a fetched policy body."""

    def test_rfc_example(self) -> None:
        """The RFC 8461 s3.2 example policy parses with mx in order."""
        body = policy(
            "version: STSv1",
            "mode: enforce",
            "mx: mail.example.com",
            "mx: *.example.net",
            "mx: backupmx.example.com",
            "max_age: 604800",
        )
        self.assertEqual(
            parse_policy(body),
            StsPolicy(
                "enforce",
                604800,
                ("mail.example.com", "*.example.net", "backupmx.example.com"),
            ),
        )

    def test_layout(self) -> None:
        """Line endings, blank lines and whitespace do not change the policy."""
        lines = (*HEAD, "mx: mail.example.test")
        table = [
            (policy(*lines), ENFORCE_MAIL),
            (policy(*lines, newline="\r\n"), ENFORCE_MAIL),
            (policy(*lines).rstrip(b"\n"), ENFORCE_MAIL),
            (policy(*lines, newline="\r\n").rstrip(b"\r\n"), ENFORCE_MAIL),
            (
                b"version: STSv1\r\nmode: enforce\nmax_age: 604800\r\n"
                b"mx: mail.example.test",
                ENFORCE_MAIL,
            ),
            (policy("", *lines[:2], "   ", "\t", *lines[2:], "", ""), ENFORCE_MAIL),
            (
                policy(
                    "version:STSv1",
                    "mode:\t enforce \t",
                    "max_age:    604800   ",
                    "mx: mail.example.test\t",
                ),
                ENFORCE_MAIL,
            ),
            (policy(" version : STSv1", *lines[1:]), ENFORCE_MAIL),
            (b"\xef\xbb\xbf" + policy(*lines), ENFORCE_MAIL),
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_duplicates(self) -> None:
        """The first version, mode and max_age count; later ones are ignored."""
        table = [
            (
                policy(*HEAD, "mode: testing", "mx: mail.example.test"),
                ENFORCE_MAIL,
            ),
            (
                policy(*HEAD, "mode: bogus", "version: STSv9", "max_age: x"),
                POLICY_SYNTAX,  # no mx in enforce mode; the junk is not seen
            ),
            (
                policy(*HEAD, "mx: mail.example.test", "mode: bogus",
                       "version: STSv9", "max_age: 99999999999"),
                ENFORCE_MAIL,
            ),
            (
                policy(*HEAD, "max_age: 1", "mx: mail.example.test"),
                ENFORCE_MAIL,
            ),
            (
                policy("mode: testing", *HEAD, "mx: mail.example.test"),
                StsPolicy("testing", 604800, ("mail.example.test",)),
            ),
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_mx(self) -> None:
        """Every mx line counts, lowercased, duplicates dropped, order kept."""
        many = tuple(f"mx{n}.example.test" for n in range(200))
        table = [
            (policy(*HEAD, *(f"mx: {m}" for m in many)), many),
            (
                policy(*HEAD, "mx: b.example.test", "mx: *.example.test",
                       "mx: a.example.test"),
                ("b.example.test", "*.example.test", "a.example.test"),
            ),
            (
                policy(*HEAD, "mx: Mail.EXAMPLE.test", "mx: mail.example.test",
                       "mx: *.Example.Test", "mx: *.example.test",
                       "mx: mail.example.test."),
                ("mail.example.test", "*.example.test"),
            ),
            (policy(*HEAD, "mx: xn--bcher-kva.example"), ("xn--bcher-kva.example",)),
            (
                policy(*HEAD, "mx: *.xn--bcher-kva.example"),
                ("*.xn--bcher-kva.example",),
            ),
            # The field name is case-sensitive: "MX" is an unknown field.
            (policy(*HEAD, "MX: other.example.test", "mx: mail.example.test"),
             ("mail.example.test",)),
        ]
        self.assertEqual(
            mismatches(lambda body: parse_policy(body).mx, table), []
        )

    def test_bad_mx(self) -> None:
        """mx values that are not ["*."] A-label names make the policy invalid."""
        bad = [
            "",
            "*",
            "*.",
            "**.example.test",
            "a.*.example.test",
            "*example.test",
            "*.*.example.test",
            "mail*.example.test",
            "mail.example.test:25",
            "[mail.example.test]",
            "mail..example.test",
            ".example.test",
            "mail.example.test..",
            "_mx.example.test",
            "-mx.example.test",
            "192.0.2.1",
            "mail.example.test extra",
            "a" * 64 + ".example.test",
            "bücher.example",
            "*.bücher.example",
            "\u212aelvin.example.test",  # lower() would make it ASCII "k"
        ]
        table = [(policy(*HEAD, f"mx: {value}"), POLICY_SYNTAX) for value in bad]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_max_age(self) -> None:
        """max_age is 1-10 digits with a value of at most 31557600."""
        table = [
            ("0", 0),
            ("1", 1),
            ("0000604800", 604800),
            ("31557600", MAX_AGE_LIMIT),
            ("31557601", POLICY_SYNTAX),
            ("9999999999", POLICY_SYNTAX),
            ("99999999999", POLICY_SYNTAX),
            ("00000000001", POLICY_SYNTAX),
            ("", POLICY_SYNTAX),
            ("-1", POLICY_SYNTAX),
            ("+1", POLICY_SYNTAX),
            ("1e6", POLICY_SYNTAX),
            ("86400s", POLICY_SYNTAX),
            ("86 400", POLICY_SYNTAX),
            ("\u0661\u0662\u0663", POLICY_SYNTAX),  # Arabic-Indic digits
        ]
        self.assertEqual(
            mismatches(
                lambda value: parse_policy(
                    policy("version: STSv1", "mode: enforce",
                           f"max_age: {value}", "mx: mail.example.test")
                ).max_age,
                table,
            ),
            [],
        )

    def test_mode_and_version(self) -> None:
        """mode and version take exactly the RFC's case-sensitive values."""
        table = [
            (("STSv1", "enforce"), "enforce"),
            (("STSv1", "testing"), "testing"),
            (("STSv1", "none"), "none"),
            (("STSv1", "Enforce"), POLICY_SYNTAX),
            (("STSv1", "report"), POLICY_SYNTAX),
            (("STSv1", ""), POLICY_SYNTAX),
            (("STSv1", "enforce testing"), POLICY_SYNTAX),
            (("STSv1", "enforc\u00e9"), POLICY_SYNTAX),
            (("stsv1", "enforce"), POLICY_SYNTAX),
            (("STSv2", "enforce"), POLICY_SYNTAX),
            (("", "enforce"), POLICY_SYNTAX),
        ]
        self.assertEqual(
            mismatches(
                lambda pair: parse_policy(
                    policy(f"version: {pair[0]}", f"mode: {pair[1]}",
                           "max_age: 86400", "mx: mail.example.test")
                ).mode,
                table,
            ),
            [],
        )

    def test_required_fields(self) -> None:
        """version, mode and max_age are required; mx unless mode is none."""
        table = [
            (b"", POLICY_SYNTAX),
            (b"\n\n", POLICY_SYNTAX),
            (policy("mode: enforce", "max_age: 1", "mx: a.test"), POLICY_SYNTAX),
            (policy("version: STSv1", "max_age: 1", "mx: a.test"), POLICY_SYNTAX),
            (policy("version: STSv1", "mode: enforce", "mx: a.test"), POLICY_SYNTAX),
            (policy(*HEAD), POLICY_SYNTAX),
            (policy("version: STSv1", "mode: testing", "max_age: 1"), POLICY_SYNTAX),
            (
                policy("version: STSv1", "mode: none", "max_age: 86400"),
                StsPolicy("none", 86400, ()),
            ),
            (
                policy("version: STSv1", "mode: none", "max_age: 86400",
                       "mx: mail.example.test"),
                StsPolicy("none", 86400, ("mail.example.test",)),
            ),
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_unknown_fields(self) -> None:
        """Extension fields are ignored whatever their (UTF-8) value."""
        table = [
            (policy(*HEAD, "foo: bar", "mx: mail.example.test"), ENFORCE_MAIL),
            (policy("x-comment: a; b = c: d", *HEAD, "mx: mail.example.test"),
             ENFORCE_MAIL),
            (policy(*HEAD, "comment: caf\u00e9 \u2603", "mx: mail.example.test"),
             ENFORCE_MAIL),
            (policy(*HEAD, "empty:", "mx: mail.example.test"), ENFORCE_MAIL),
            (policy(*HEAD, "n" * 32 + ": 1", "mx: mail.example.test"), ENFORCE_MAIL),
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_malformed_lines(self) -> None:
        """A line without ':' or with a malformed field name is an error."""
        table = [
            (policy(*HEAD, "mx mail.example.test"), POLICY_SYNTAX),
            (policy(*HEAD, "mx: mail.example.test", "garbage"), POLICY_SYNTAX),
            (policy(*HEAD, "mx: mail.example.test", ": value"), POLICY_SYNTAX),
            (policy(*HEAD, "mx: mail.example.test", "two words: x"), POLICY_SYNTAX),
            (policy(*HEAD, "mx: mail.example.test", "_x: 1"), POLICY_SYNTAX),
            (policy(*HEAD, "mx: mail.example.test", "n" * 33 + ": 1"), POLICY_SYNTAX),
            (b"<html><body>Not here</body></html>\n", POLICY_SYNTAX),
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_encoding(self) -> None:
        """A body that is not UTF-8 is an error."""
        table = [
            (policy(*HEAD, "mx: mail.example.test") + b"\xff\n", POLICY_SYNTAX),
            (policy(*HEAD).replace(b"enforce", b"enforc\xe9") + b"mx: a.test\n",
             POLICY_SYNTAX),
            (b"\xfe\xff\x00v\x00e\x00r", POLICY_SYNTAX),  # UTF-16
        ]
        self.assertEqual(mismatches(parse_policy, table), [])

    def test_size_limit(self) -> None:
        """A body of 64 KiB is accepted; one byte more is refused."""
        head = policy(*HEAD, "mx: mail.example.test", "padding: ")
        at_limit = head[:-1] + b"x" * (MAX_POLICY_SIZE - len(head)) + b"\n"
        self.assertEqual(len(at_limit), MAX_POLICY_SIZE)
        self.assertEqual(parse_policy(at_limit), ENFORCE_MAIL)
        e = error_of(parse_policy, at_limit + b"\n")
        self.assertEqual(e.kind, "policy-syntax")
        self.assertIn("65537", e.message)

    def test_messages(self) -> None:
        """Messages name the line and what is wrong with it."""
        table = [
            (
                policy("version: STSv1", "mode: enforce",
                       "max_age: 99999999999", "mx: a.test"),
                "policy line 3: max_age '99999999999' is not 1-10 digits",
            ),
            (
                policy(*HEAD, "", "mx: a.*.test"),
                "policy line 5: mx 'a.*.test' is not an A-label host name "
                "or *.name",
            ),
            (
                policy("version: STSv1", "mode: strict"),
                "policy line 2: mode 'strict' is not enforce, testing or none",
            ),
            (policy(*HEAD), "policy has mode enforce but no mx field"),
            (policy("mode: none", "max_age: 1"), "policy has no version field"),
        ]
        self.assertEqual(
            mismatches(lambda body: error_of(parse_policy, body).message, table),
            [],
        )

    @settings(deadline=None)
    @given(st.binary(max_size=200))
    def test_arbitrary_body(self, body: bytes) -> None:
        """Any body yields a policy or a policy-syntax StsError, nothing else."""
        for candidate in (body, policy(*HEAD, "mx: a.test") + body):
            try:
                result = parse_policy(candidate)
            except StsError as e:
                self.assertEqual(e.kind, "policy-syntax")
            else:
                self.assertIn(result.mode, {"enforce", "testing", "none"})


patterns = st.builds(
    lambda wildcard, labels, tld: ("*." if wildcard else "") + ".".join(
        [*labels, tld]
    ),
    st.booleans(),
    st.lists(st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True),
             max_size=3),
    st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True),
)
policies = st.builds(
    StsPolicy,
    st.sampled_from(["enforce", "testing"]),
    st.integers(min_value=0, max_value=MAX_AGE_LIMIT),
    st.lists(patterns, min_size=1, max_size=5, unique=True).map(tuple),
)


class StsPolicyTests(SynchronousTestCase):
    """StsPolicy renders for TLSRPT and round-trips through the store."""

    def test_canonical_lines(self) -> None:
        """canonical_lines() is version, mode, each mx, max_age, in that order."""
        p = StsPolicy("enforce", 604800, ("mail.example.test", "*.example.net"))
        self.assertEqual(
            p.canonical_lines(),
            ("version: STSv1", "mode: enforce", "mx: mail.example.test",
             "mx: *.example.net", "max_age: 604800"),
        )
        self.assertEqual(
            StsPolicy("none", 86400, ()).canonical_lines(),
            ("version: STSv1", "mode: none", "max_age: 86400"),
        )

    @settings(deadline=None)
    @given(policies)
    def test_canonical_lines_parse_back(self, p: StsPolicy) -> None:
        """canonical_lines() is itself a policy that parses to the same value."""
        for newline in ("\n", "\r\n"):
            body = policy(*p.canonical_lines(), newline=newline)
            self.assertEqual(parse_policy(body), p)

    @settings(deadline=None)
    @given(policies)
    def test_json_round_trip(self, p: StsPolicy) -> None:
        """from_json(to_json(p)) == p."""
        self.assertEqual(StsPolicy.from_json(p.to_json()), p)

    def test_json_form(self) -> None:
        """to_json() is a plain dict, and none-mode policies round-trip too."""
        p = StsPolicy("enforce", 604800, ("mail.example.test", "*.example.net"))
        self.assertEqual(
            p.to_json(),
            {"mode": "enforce", "max_age": 604800,
             "mx": ["mail.example.test", "*.example.net"]},
        )
        none = StsPolicy("none", 0, ())
        self.assertEqual(StsPolicy.from_json(none.to_json()), none)

    def test_from_json_tolerates(self) -> None:
        """Unknown keys are ignored; mx is canonicalised like a fetched one."""
        data = {"mode": "testing", "max_age": 5, "version": "STSv1",
                "mx": ["Mail.Example.Test", "mail.example.test", "*.x.test"]}
        self.assertEqual(
            StsPolicy.from_json(data),
            StsPolicy("testing", 5, ("mail.example.test", "*.x.test")),
        )

    def test_from_json_junk(self) -> None:
        """Anything from_json cannot trust raises StsError policy-syntax."""
        good: dict[str, Any] = {"mode": "enforce", "max_age": 1, "mx": ["a.test"]}
        junk: list[Any] = [
            None, [], "enforce", 1, {},
            {**good, "mode": None}, {**good, "mode": "bogus"},
            {**good, "mode": "ENFORCE"},
            {k: v for k, v in good.items() if k != "max_age"},
            {**good, "max_age": "604800"}, {**good, "max_age": True},
            {**good, "max_age": 1.5}, {**good, "max_age": -1},
            {**good, "max_age": MAX_AGE_LIMIT + 1},
            {k: v for k, v in good.items() if k != "mx"},
            {**good, "mx": "a.test"}, {**good, "mx": None},
            {**good, "mx": {"a.test": 1}}, {**good, "mx": [1]},
            {**good, "mx": [None]}, {**good, "mx": ["bad host"]},
            {**good, "mx": ["a.*.test"]}, {**good, "mx": ["b\u00fccher.test"]},
            {**good, "mx": []},
        ]
        self.assertEqual(
            mismatches(StsPolicy.from_json, [(j, POLICY_SYNTAX) for j in junk]),
            [],
        )


class MxMatchesTests(SynchronousTestCase):
    """mx_matches() applies RFC 8461 s4.1 to an MX host name."""

    def test_table(self) -> None:
        """Exact names and one-label wildcards, case and trailing dot ignored."""
        table = [
            (("mail.example.com", "mail.example.com"), True),
            (("mail.example.com", "MAIL.Example.COM"), True),
            (("Mail.Example.Com", "mail.example.com"), True),
            (("mail.example.com", "mail.example.com."), True),
            (("mail.example.com.", "mail.example.com"), True),
            (("mail.example.com", "mx.example.com"), False),
            (("mail.example.com", "mail.example.com.evil.test"), False),
            (("example.com", "mail.example.com"), False),
            (("mail.example.com", "example.com"), False),
            # RFC 8461 s3.2/s4.1: "*.example.com" matches exactly one label.
            (("*.example.com", "mail.example.com"), True),
            (("*.example.com", "MX1.EXAMPLE.COM."), True),
            (("*.example.com", "example.com"), False),
            (("*.example.com", "a.b.example.com"), False),
            (("*.example.com", ".example.com"), False),
            (("*.example.com", "mailexample.com"), False),
            (("*.example.com", "mail.otherexample.com"), False),
            (("*.example.com", "mail.example.com.evil.test"), False),
            # Degenerate patterns match nothing.
            (("*.", "a."), False),
            (("*..", "a.."), False),
            (("mail.example.com", "\u212aail.example.com"), False),
        ]
        self.assertEqual(
            mismatches(lambda pair: mx_matches(*pair), table), []
        )

    @settings(deadline=None)
    @given(patterns, st.from_regex(r"[a-z0-9]{1,5}", fullmatch=True))
    def test_wildcard_one_label(self, pattern: str, label: str) -> None:
        """A wildcard matches its base plus one label, never the base or two."""
        if not pattern.startswith("*."):
            self.assertTrue(mx_matches(pattern, pattern.upper()))
            return
        base = pattern[2:]
        self.assertTrue(is_valid_hostname(base))
        self.assertTrue(mx_matches(pattern, f"{label}.{base}"))
        self.assertFalse(mx_matches(pattern, base))
        self.assertFalse(mx_matches(pattern, f"{label}.{label}.{base}"))


class PostfixMatchTests(SynchronousTestCase):
    """postfix_match() writes patterns as a Postfix match= value."""

    def test_table(self) -> None:
        """'*.x' becomes '.x'; order is kept; duplicates go."""
        table = [
            (("mail.example.com", "*.example.net"), "mail.example.com:.example.net"),
            (("b.test", "a.test"), "b.test:a.test"),
            (("*.example.net",), ".example.net"),
            (("*.example.net", "a.test", "*.example.net"), ".example.net:a.test"),
            ((), ""),
        ]
        self.assertEqual(mismatches(postfix_match, table), [])
