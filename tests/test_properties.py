"""
Property tests (issue #7): the two wire codecs, the MTA-STS record and policy
parsers, domain normalisation and (issue #14) the Redis reply parser keep
their promises for generated input.
The codecs are driven through their public protocol interface with the fake
lookup of the fuzz harness (tests/fuzz/targets.py), whose seed and regression
corpus is replayed here too, so the long-run harness stays valid.
"""

from __future__ import annotations

from pathlib import Path
from random import Random
from typing import Any

import idna
from hypothesis import HealthCheck, Phase, assume, given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.names import MAX_NAME_LENGTH, is_valid_hostname, normalise
from mxpolicyd.evidence.sts import (
    MAX_AGE_LIMIT,
    StsError,
    StsPolicy,
    StsRecord,
    parse_policy,
    parse_txt,
)
from mxpolicyd.net.redis import RedisError, RedisProtocolError, ReplyParser
from mxpolicyd.protocols.socketmap import netstring
from tests.fuzz import targets
from tests.fuzz.targets import (
    EXIM_TIMEOUT,
    FakeLookups,
    LookupCrash,
    exim_answer,
    netstrings,
    run_exim,
    run_socketmap,
    socketmap_answer,
)

CORPUS = Path(__file__).parent / "fuzz" / "corpus"
# Modest: the long runs are tests/fuzz/run's job; this keeps the suite fast.
# No target phase: its Pareto optimisation costs seconds per test.
SOME = settings(max_examples=40, deadline=None,
                phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink],
                suppress_health_check=[HealthCheck.too_slow])


def cuts(data: st.DataObject, stream: bytes) -> list[bytes]:
    """`stream` cut at drawn points into non-empty segments."""
    points = sorted(set(data.draw(
        st.lists(st.integers(1, max(1, len(stream) - 1)), max_size=8)
    )))
    bounds = [0, *(p for p in points if p < len(stream)), len(stream)]
    return [stream[a:b] for a, b in zip(bounds, bounds[1:]) if b > a]


# --- the socketmap codec -----------------------------------------------------

MAX_REQUEST = 64
names = st.from_regex(rb"[a-z][a-z0-9_-]{0,7}", fullmatch=True)
# The first byte steers the fake lookup: "~" answers later, "!" crashes,
# "?" fails; keys may hold spaces, commas, colons and any other byte.
keys = st.binary(min_size=1, max_size=24)
requests = st.tuples(names, keys)
# A request of exactly max_request_size bytes.
AT_LIMIT = (b"postfix", b"k" * (MAX_REQUEST - len(b"postfix ")))
# Well-framed requests the codec refuses by content, connection kept.
refused_by_content = st.sampled_from([b"", b"nokey", b"name ", b" key"])
malformed_frames = st.one_of(
    st.just(b"01:x,"),  # leading zero
    st.just(b"1234567:"),  # seven digits
    st.just(b":"),  # no length
    st.from_regex(rb"[0-9]{0,5}[^0-9:]", fullmatch=True),  # junk in the length
    st.builds(lambda p, c: b"%d:%s%s" % (len(p), p, c),  # no comma after the data
              st.binary(max_size=10), st.binary(min_size=1, max_size=1).filter(lambda c: c != b",")),
)


def frame(request: tuple[bytes, bytes]) -> bytes:
    return netstring(request[0] + b" " + request[1])


def expected_reply(request: tuple[bytes, bytes]) -> bytes:
    return b"TEMP " if request[1][:1] in (b"!", b"?") else socketmap_answer(*request)


class SocketmapCodecPropertyTests(SynchronousTestCase):
    """The netstring codec for any stream of bytes, cut anywhere."""

    def tearDown(self) -> None:
        self.flushLoggedErrors(LookupCrash)

    def assertReplies(self, got: list[bytes], expected: list[bytes]) -> None:
        self.assertEqual(len(got), len(expected), (got, expected))
        for g, e in zip(got, expected):
            self.assertTrue(g == e or e in (b"TEMP ", b"PERM ") and g.startswith(e), (g, e))

    @SOME
    @given(st.lists(st.one_of(requests.map(frame), refused_by_content.map(netstring),
                              malformed_frames, st.binary(max_size=12)), max_size=8),
           st.booleans(), st.data())
    def test_split_anywhere(self, parts: list[bytes], fired: bool, data: st.DataObject) -> None:
        """Any byte stream gets the same replies, close and lookups whether cut or whole."""
        stream = b"".join(parts)
        whole = run_socketmap([stream], MAX_REQUEST, fired, hold=False)
        cut = run_socketmap(cuts(data, stream), MAX_REQUEST, fired, hold=False)
        self.assertEqual((cut.output, cut.closed, cut.calls),
                         (whole.output, whole.closed, whole.calls))
        netstrings(whole.output)

    @SOME
    @given(st.lists(st.one_of(requests, refused_by_content, st.just(AT_LIMIT)), max_size=12),
           st.data())
    def test_one_reply_per_request(self, items: list[Any], data: st.DataObject) -> None:
        """Each well-formed request gets exactly one netstring reply, in order; the connection stays open."""
        stream = b"".join(frame(i) if isinstance(i, tuple) else netstring(i) for i in items)
        got = run_socketmap(cuts(data, stream), MAX_REQUEST, False, hold=False)
        self.assertReplies(netstrings(got.output), [
            expected_reply(i) if isinstance(i, tuple) else b"PERM " for i in items])
        self.assertEqual(got.calls, [i for i in items if isinstance(i, tuple)])
        self.assertFalse(got.closed)

    @SOME
    @given(st.lists(requests, max_size=12), st.data())
    def test_requests_sent_ahead(self, items: list[Any], data: st.DataObject) -> None:
        """Requests sent while a lookup is pending are answered in order, or refused with PERM beyond the limit."""
        slow = (b"postfix", b"~slow.test")
        items.insert(data.draw(st.integers(0, len(items))), slow)
        stream = b"".join(frame(r) for r in items)
        got = run_socketmap(cuts(data, stream), MAX_REQUEST, False, hold=True)
        replies = netstrings(got.output)
        expected = [expected_reply(r) for r in items]
        waiting = [i for i, r in enumerate(items) if r[1].startswith(b"~")]
        ahead = len(b"".join(frame(r) for r in items[waiting[0] + 1 :]))
        if got.closed:
            # More than a request's worth sent ahead of a pending reply.
            self.assertGreater(ahead, MAX_REQUEST)
            self.assertReplies(replies[:-1], expected[: len(replies) - 1])
            self.assertTrue(replies[-1].startswith(b"PERM "), replies)
        else:
            self.assertReplies(replies, expected)
            self.assertEqual(got.calls, items)

    @SOME
    @given(st.lists(requests, max_size=5), malformed_frames, st.binary(max_size=30),
           st.data())
    def test_malformed_framing(self, before: list[Any], bad: bytes, after: bytes,
                               data: st.DataObject) -> None:
        """Broken framing gets one PERM reply after the earlier replies, then a close; nothing after is read."""
        stream = b"".join(frame(r) for r in before) + bad + after
        got = run_socketmap(cuts(data, stream), MAX_REQUEST, False, hold=False)
        replies = netstrings(got.output)
        self.assertReplies(replies[:-1], [expected_reply(r) for r in before])
        self.assertTrue(replies[-1].startswith(b"PERM "), replies)
        self.assertTrue(got.closed)
        self.assertEqual(got.calls, before)

    @SOME
    @given(st.integers(MAX_REQUEST + 1, 999999), st.binary(max_size=20))
    def test_oversized_refused(self, size: int, start: bytes) -> None:
        """A length over the limit is refused with PERM and a close before its data arrives."""
        got = run_socketmap([b"%d:" % size, start], MAX_REQUEST, False, hold=False)
        self.assertEqual(len(netstrings(got.output)), 1)
        self.assertTrue(got.output.split(b":", 1)[1].startswith(b"PERM "), got.output)
        self.assertTrue(got.closed)
        self.assertEqual(got.calls, [])


# --- the Exim readsocket codec -------------------------------------------------

EXIM_MAX = 64
lines = st.binary(max_size=EXIM_MAX).filter(lambda b: b"\n" not in b)
error_line = targets.EXIM_ERROR


class EximCodecPropertyTests(SynchronousTestCase):
    """The readsocket codec: one request line, ended by newline or half-close."""

    def tearDown(self) -> None:
        self.flushLoggedErrors(LookupCrash)

    def assertAnswer(self, output: bytes, key: bytes) -> None:
        if key[:1] in (b"!", b"?"):
            self.assertRegex(output, error_line)
        else:
            self.assertEqual(output, exim_answer(key))

    @SOME
    @given(st.lists(st.one_of(lines, st.just(b"\n"), st.just(b"\r\n")), max_size=5),
           st.booleans(), st.booleans(), st.data())
    def test_split_anywhere(self, parts: list[bytes], half_close: bool, fired: bool,
                            data: st.DataObject) -> None:
        """Cutting the request anywhere changes neither the lookup nor the one reply line."""
        stream = b"".join(parts)
        # Longer lines: see FuzzRegressionTests.test_exim_long_line.
        assume(len(stream.partition(b"\n")[0]) <= EXIM_MAX)
        whole = run_exim([stream], EXIM_MAX, fired, False, half_close)
        cut = run_exim(cuts(data, stream), EXIM_MAX, fired, False, half_close)
        self.assertEqual((cut.output, cut.calls), (whole.output, whole.calls))
        self.assertEqual(whole.output.count(b"\n"), 1)
        self.assertTrue(whole.output.endswith(b"\n"))

    @SOME
    @given(lines, st.binary(max_size=20), st.booleans(), st.data())
    def test_newline_ends_request(self, line: bytes, junk: bytes, half_close: bool,
                                  data: st.DataObject) -> None:
        """The first newline ends the request: the stripped line is looked up, the rest ignored."""
        key = line.rstrip(b"\r").strip()
        got = run_exim(cuts(data, line + b"\n" + junk), EXIM_MAX, False, False, half_close)
        if key:
            self.assertEqual(got.calls, [(key,)])
            self.assertAnswer(got.output, key)
        else:
            self.assertEqual(got.calls, [])
            self.assertRegex(got.output, error_line)

    @SOME
    @given(st.one_of(lines, st.just(b"k" * EXIM_MAX)), st.booleans(), st.data())
    def test_half_close_ends_request(self, line: bytes, fired: bool,
                                     data: st.DataObject) -> None:
        """Without a newline, the half-close ends the request."""
        key = line.rstrip(b"\r").strip()
        got = run_exim(cuts(data, line), EXIM_MAX, fired, False, True)
        self.assertEqual(got.calls, [(key,)] if key else [])
        if key:
            self.assertAnswer(got.output, key)
        else:
            self.assertRegex(got.output, error_line)

    @SOME
    @given(st.one_of(
        st.from_regex(rb"[ \t\r]*\n?", fullmatch=True),  # empty request
        st.binary(min_size=EXIM_MAX + 1, max_size=3 * EXIM_MAX).map(
            lambda b: b.replace(b"\n", b"x")),  # too long, no end
    ), st.booleans(), st.data())
    def test_junk_gets_clear_answer(self, junk: bytes, half_close: bool,
                                    data: st.DataObject) -> None:
        """An empty or over-long request gets one action=temp line with a reason, and no lookup."""
        got = run_exim(cuts(data, junk), EXIM_MAX, False, False, half_close)
        self.assertRegex(got.output, error_line)
        self.assertEqual(got.calls, [])

    @SOME
    @given(lines.filter(lambda b: b.strip()))
    def test_no_end_times_out(self, line: bytes) -> None:
        """A request neither ended by newline nor half-close gets a timeout line, and no lookup."""
        got = run_exim([line], EXIM_MAX, False, False, False)
        self.assertEqual(got.calls, [])
        self.assertRegex(got.output, error_line)
        self.assertIn(b"%d s" % EXIM_TIMEOUT, got.output)


# --- MTA-STS: the TXT record -----------------------------------------------------

record_ids = st.from_regex(r"[A-Za-z0-9]{1,32}", fullmatch=True)
wsp = st.from_regex(r"[ \t]{0,2}", fullmatch=True)
extensions = st.tuples(
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,8}", fullmatch=True).filter(lambda n: n != "id"),
    st.from_regex(r"[\x21-\x3a\x3c\x3e-\x7e]{1,8}", fullmatch=True),
)


@st.composite
def sts_records(draw: Any) -> tuple[str, str]:
    """A valid record text and its id: extensions, spacing, later ids, trailing ';'."""
    record_id = draw(record_ids)
    fields = [f"{n}={v}" for n, v in draw(st.lists(extensions, max_size=3))]
    fields.insert(draw(st.integers(0, len(fields))), f"id={record_id}")
    fields += [f"id={i}" for i in draw(st.lists(record_ids, max_size=1))]
    text = "v=STSv1"
    for f in fields:
        text += draw(wsp) + ";" + draw(wsp) + f
    if draw(st.booleans()):
        text += draw(wsp) + ";"
    return text + draw(wsp), record_id


def strings_of(data: st.DataObject, raw: bytes) -> list[bytes]:
    """`raw` as TXT character-strings, cut at drawn points (empty ones allowed)."""
    points = sorted(data.draw(st.lists(st.integers(0, len(raw)), max_size=3)))
    bounds = [0, *points, len(raw)]
    return [raw[a:b] for a, b in zip(bounds, bounds[1:])]


class StsRecordPropertyTests(SynchronousTestCase):
    """parse_txt against the RFC 8461 s3.1 grammar."""

    @SOME
    @given(st.lists(st.lists(st.one_of(
        st.binary(max_size=16),
        st.sampled_from([b"v=STSv1", b"; ", b"id=", b"abc", b"\t", b"=", b";"]),
    ), max_size=6), max_size=3))
    def test_only_documented_errors(self, records: list[list[bytes]]) -> None:
        """Any TXT record set gives the record the grammar describes or an StsError of a TXT kind."""
        try:
            record = parse_txt(records)
        except StsError as e:
            self.assertIn(e.kind, targets.TXT_KINDS)
            self.assertEqual(e.kind, targets.txt_model(records))
            self.assertTrue(e.message.isascii() and e.message.isprintable(), e.message)
        else:
            self.assertEqual(record.id.encode("ascii"), targets.txt_model(records))

    @SOME
    @given(sts_records(), st.lists(st.sampled_from(
        [b"v=spf1 -all", b"v=STSv10; id=1", b"V=STSv1; id=2", b""]), max_size=2), st.data())
    def test_valid_records_parse(self, generated: tuple[str, str], others: list[bytes],
                                 data: st.DataObject) -> None:
        """A generated valid record, cut into strings among non-STS records, gives its first id and text."""
        text, record_id = generated
        records = [[o] for o in others]
        records.insert(data.draw(st.integers(0, len(records))),
                       strings_of(data, text.encode("ascii")))
        expected = StsRecord(id=record_id, text=text)
        self.assertEqual(parse_txt(records), expected)
        self.assertEqual(parse_txt([[expected.text.encode("ascii")]]), expected)


# --- MTA-STS: the policy -----------------------------------------------------------

labels = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
hosts = st.builds(lambda ls, tld: ".".join([*ls, tld]),
                  st.lists(labels, max_size=3), st.from_regex(r"[a-z][a-z0-9]{0,4}", fullmatch=True))
patterns = st.builds(lambda w, h: ("*." if w else "") + h, st.booleans(), hosts)


def spelled(rng: Random, pattern: str) -> str:
    """`pattern` as a policy may spell it: any case, maybe a trailing dot."""
    text = "".join(c.upper() if rng.random() < 0.3 else c for c in pattern)
    return text + ("." if rng.random() < 0.3 else "")


class StsPolicyPropertyTests(SynchronousTestCase):
    """parse_policy and the stored form for generated and arbitrary input."""

    @SOME
    @given(st.one_of(
        st.binary(max_size=120),
        st.lists(st.sampled_from([
            b"version: STSv1", b"mode: enforce", b"mode: none", b"max_age: 86400",
            b"mx: a.test", b"mx: *.b.test", b"\r", b"\n", b":", b" ", b"\xef\xbb\xbf", b"\xff",
        ]), max_size=12).map(b"".join),
    ))
    def test_only_documented_errors(self, body: bytes) -> None:
        """Any body gives a policy that keeps its promises or a policy-syntax StsError."""
        try:
            p = parse_policy(body)
        except StsError as e:
            self.assertEqual(e.kind, "policy-syntax")
            self.assertTrue(e.message.isascii() and e.message.isprintable(), e.message)
        else:
            targets.check_policy(p)

    @SOME
    @given(st.sampled_from(["enforce", "testing", "none"]),
           st.integers(0, MAX_AGE_LIMIT), st.lists(patterns, max_size=4), st.data())
    def test_generated_policies_parse(self, mode: str, max_age: int, mx: list[str],
                                      data: st.DataObject) -> None:
        """A valid policy in any layout parses to what was generated."""
        if not mx and mode != "none":
            mx = ["mail.example.test"]
        rng = data.draw(st.randoms(use_true_random=False))

        def sep() -> str:
            return rng.choice(["", "", " ", "\t", " \t "])

        mx += data.draw(st.lists(st.sampled_from(mx), max_size=2)) if mx else []
        fields = [("version", "STSv1"), ("mode", mode), ("max_age", str(max_age))]
        fields += [("mx", p) for p in mx]
        fields += data.draw(st.lists(st.tuples(
            st.from_regex(r"x[a-z_.-]{0,5}", fullmatch=True),
            st.text(alphabet="ab \u00fc\u2603:", max_size=6).map(str.strip)), max_size=2))
        fields = data.draw(st.permutations(fields))
        in_order = [value for name, value in fields if name == "mx"]
        # Repeats of version, mode and max_age after the first are not looked at.
        fields += data.draw(st.lists(st.sampled_from(
            [("mode", "bogus"), ("version", "STSv9"), ("max_age", "x")]), max_size=2))
        body = "\ufeff" if rng.random() < 0.3 else ""
        for name, value in fields:
            if name == "mx":
                value = spelled(rng, value)
            body += sep() + name + sep() + ":" + sep() + value + sep()
            body += rng.choice(["\n", "\r\n", "\n\n", "\n \t\r\n"])
        if rng.random() < 0.3:
            body = body.rstrip("\r\n")
        expected = StsPolicy(mode, max_age, tuple(dict.fromkeys(in_order)))
        self.assertEqual(parse_policy(body.encode("utf-8")), expected)
        targets.check_policy(expected)

    @SOME
    @given(st.recursive(
        st.none() | st.booleans() | st.integers(-2, 2**40) | st.text(max_size=12),
        lambda inner: st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["mode", "max_age", "mx", "x"]), inner, max_size=4),
        max_leaves=10,
    ))
    def test_stored_form(self, data: Any) -> None:
        """from_json of any JSON value gives a valid policy or a policy-syntax StsError."""
        try:
            p = StsPolicy.from_json(data)
        except StsError as e:
            self.assertEqual(e.kind, "policy-syntax")
        else:
            targets.check_policy(p)


# --- domain normalisation ------------------------------------------------------------

ascii_names = st.lists(st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9-]{0,10}[A-Za-z0-9])?",
                                     fullmatch=True), min_size=1, max_size=4).map(".".join)
u_labels = st.text(alphabet="abz09-\u00fc\u00e9\u00df\u03c3\u4e2d\u0430", min_size=1,
                   max_size=8)


class NormalisePropertyTests(SynchronousTestCase):
    """normalise: never raises, canonical output, idempotent."""

    def assertCanonical(self, name: str | None) -> None:
        if name is None:
            return
        self.assertTrue(name.isascii() and name == name.lower(), name)
        self.assertTrue(is_valid_hostname(name) and "." in name, name)
        self.assertLessEqual(len(name), MAX_NAME_LENGTH)
        self.assertEqual(normalise(name.encode("ascii")), name)
        for label in name.split("."):
            if label.startswith("xn--"):
                self.assertEqual(idna.alabel(idna.ulabel(label)).decode("ascii"), label)

    @SOME
    @given(st.one_of(st.binary(max_size=80),
                     st.text(alphabet="aZ9.-[]:_ \u00fc\u3002\uff0e\u200d\ufe0e",
                             max_size=20).map(str.encode)))
    def test_any_key(self, key: bytes) -> None:
        """Any key gives None or a lower-case A-label name, idempotently, and never raises."""
        self.assertCanonical(normalise(key))

    @SOME
    @given(ascii_names, st.booleans())
    def test_ascii_names(self, name: str, dot: bool) -> None:
        """An ASCII host name is only lower-cased and loses one trailing dot."""
        got = normalise((name + "." * dot).encode("ascii"))
        if "." in name and not name.rpartition(".")[2].isdigit() and len(name) <= 253 \
                and "xn--" not in name.lower():
            self.assertEqual(got, name.lower())
        self.assertCanonical(got)

    @SOME
    @given(st.lists(u_labels, min_size=1, max_size=3), st.booleans())
    def test_u_labels(self, parts: list[str], dot: bool) -> None:
        """U-label names map to A-labels that normalise to themselves."""
        key = (".".join([*parts, "test"]) + "." * dot).encode("utf-8")
        got = normalise(key)
        self.assertCanonical(got)
        if got is not None:
            self.assertEqual(normalise(key.upper()), got)


# --- the Redis reply parser (issue #14) -----------------------------------------------

# Small bounds, so that generated replies reach them and go beyond.
BULK, DEPTH, ELEMENTS, REPLY = 24, 3, 40, 1024


def small_parser() -> ReplyParser:
    return ReplyParser(max_bulk=BULK, max_depth=DEPTH, max_elements=ELEMENTS, max_reply=REPLY)


line_text = st.text(st.characters(blacklist_characters="\r\n", max_codepoint=0x2FF),
                    max_size=10)
scalars = st.one_of(
    line_text.map(lambda t: ("+", t)),
    line_text.map(lambda t: ("-", t)),
    st.integers(-(2**63), 2**63 - 1).map(lambda n: (":", n)),
    st.binary(max_size=BULK).map(lambda b: ("$", b)),
    st.just(("$", None)),
)


def nested(depth: int) -> st.SearchStrategy[Any]:
    """Replies with arrays at most C{depth} deep (a null array is one level too)."""
    if depth == 0:
        return scalars
    return st.one_of(scalars, st.just(("*", None)),
                     st.lists(nested(depth - 1), max_size=3).map(lambda v: ("*", v)))


def wire(value: Any) -> bytes:
    """A reply as Redis writes it."""
    kind, data = value
    if data is None:
        return kind.encode() + b"-1\r\n"
    if kind in "+-":
        return kind.encode() + data.encode("utf-8") + b"\r\n"
    if kind == ":":
        return b":%d\r\n" % data
    if kind == "$":
        return b"$%d\r\n%s\r\n" % (len(data), data)
    return b"*%d\r\n" % len(data) + b"".join(wire(v) for v in data)


def parsed(value: Any) -> Any:
    """What the parser makes of a reply (errors as their text, to compare)."""
    kind, data = value
    if kind == "-":
        return ("error", data)
    if kind == "*" and data is not None:
        return [parsed(v) for v in data]
    return data


def elements(value: Any) -> int:
    kind, data = value
    if kind != "*" or data is None:
        return 0
    return len(data) + sum(elements(v) for v in data)


# Well-formed replies within the small bounds.
replies = nested(DEPTH).filter(lambda v: elements(v) <= ELEMENTS and len(wire(v)) <= REPLY)
# Replies that no stream may contain: not RESP2, or beyond a bound.
bad_replies = st.one_of(
    st.sampled_from([b"$-2\r\n", b"*-2\r\n", b"$-0\r\n", b"$x\r\n", b"$+1\r\n", b"$ 1\r\n",
                     b":1_0\r\n", b":\r\n", b"?\r\n", b"\r\n", b"$2\r\nabc\r\n",
                     b"$%d\r\n" % (BULK + 1), b"$999999999999\r\n",
                     b"*1\r\n" * (DEPTH + 1), b"*1\r\n" * 2000, b"*%d\r\n" % (ELEMENTS + 1),
                     # 40 elements of 24 bytes: more bytes than one reply may hold
                     b"*40\r\n" + (b"$24\r\n" + b"y" * 24 + b"\r\n") * 40]),
    st.binary(min_size=1, max_size=1).filter(lambda b: b not in b"+-:$*").map(lambda b: b + b"x\r\n"),
    st.integers(2, 10**15).map(lambda n: b"$-%d\r\n" % n),
)


def collect(parser: ReplyParser, segments: list[bytes]) -> tuple[list[Any], bool]:
    """The replies the segments give, fed in turn, and whether a protocol error ended them."""
    got: list[Any] = []
    for segment in segments:
        try:
            got += parser.feed(segment)
        except RedisProtocolError:
            return [comparable(r) for r in got], True
    return [comparable(r) for r in got], False


def comparable(reply: Any) -> Any:
    """Error replies as their text, to compare."""
    if isinstance(reply, RedisError):
        return ("error", str(reply))
    if isinstance(reply, list):
        return [comparable(r) for r in reply]
    return reply


class RedisReplyPropertyTests(SynchronousTestCase):
    """ReplyParser for any stream of bytes, cut anywhere."""

    @SOME
    @given(st.lists(replies, max_size=6), st.data())
    def test_split_anywhere(self, values: list[Any], data: st.DataObject) -> None:
        """Valid replies give the same values, in order, however the stream is cut."""
        stream = b"".join(wire(v) for v in values)
        expected = [parsed(v) for v in values]
        self.assertEqual(collect(small_parser(), [stream]), (expected, False))
        self.assertEqual(collect(small_parser(), cuts(data, stream)), (expected, False))
        self.assertEqual(collect(ReplyParser(), cuts(data, stream)), (expected, False))

    @SOME
    @given(st.lists(replies, max_size=4), bad_replies, st.binary(max_size=16), st.data())
    def test_invalid_raises_protocol_error(self, before: list[Any], bad: bytes, after: bytes,
                                           data: st.DataObject) -> None:
        """A bad reply raises RedisProtocolError, cut or whole, after the replies before it at most."""
        stream = b"".join(wire(v) for v in before) + bad + after
        got, failed = collect(small_parser(), cuts(data, stream))
        self.assertTrue(failed, stream)
        self.assertEqual(got, [parsed(v) for v in before][:len(got)])
        self.assertEqual(collect(small_parser(), [stream]), ([], True))

    @SOME
    @given(st.lists(st.one_of(replies.map(wire), bad_replies, st.binary(max_size=12),
                              st.sampled_from([b"\r\n", b"$", b"*", b"-1\r\n", b"3\r\n"])),
                    max_size=8), st.data())
    def test_any_bytes(self, parts: list[bytes], data: st.DataObject) -> None:
        """Any bytes give replies or a RedisProtocolError, nothing else, and the same whether cut or whole."""
        stream = b"".join(parts)
        whole = collect(small_parser(), [stream])
        cut = collect(small_parser(), cuts(data, stream))
        self.assertEqual(cut[1], whole[1])
        if not whole[1]:
            self.assertEqual(cut[0], whole[0])


# --- the fuzz corpus, and what fuzzing found -------------------------------------------

class FuzzCorpusTests(SynchronousTestCase):
    """The fuzz targets pass on their checked-in seeds and regression inputs."""

    def test_corpus(self) -> None:
        """Every corpus input passes its target's invariants."""
        failures = []
        for name in targets.TARGETS:
            inputs = sorted((CORPUS / name).iterdir())
            self.assertTrue(inputs, name)
            failures += [(name, f.name, e) for f in inputs
                         for _, e in targets.replay(name, [f.read_bytes()])]
        self.flushLoggedErrors(LookupCrash)
        self.assertEqual(failures, [])

    def test_targets_catch_bugs(self) -> None:
        """The targets' invariants fail on wrong answers, not only on exceptions."""
        self.assertRaises(targets.InvariantError, targets.check, False, "x")
        wrong = targets.socketmap_model(b"3:a b,", 64)
        self.assertFalse(targets.match_replies([b"OK wrong"], wrong.replies))
        self.assertEqual(targets.txt_model([[b"v=STSv1; id=x_y"]]), "invalid-record")

    def test_split(self) -> None:
        """split() loses no byte and makes no empty segment."""
        stream = bytes(range(200))
        for seed in (0, 1, 7, 200, 255):
            chunks = targets.split(stream, seed)
            self.assertEqual(b"".join(chunks), stream)
            self.assertNotIn(b"", chunks)


class FuzzRegressionTests(SynchronousTestCase):
    """What the long fuzzing runs found in the codecs, fixed."""

    def tearDown(self) -> None:
        self.flushLoggedErrors(LookupCrash)

    def test_socketmap_fired_deferred(self) -> None:
        """300 pipelined requests answered by already-fired Deferreds get 300 replies."""
        stream = frame((b"postfix", b"a.test")) * 300
        got = run_socketmap([stream], MAX_REQUEST, True, hold=False)
        self.assertEqual(netstrings(got.output), [b"OK postfix=a.test"] * 300)


    def test_exim_long_line(self) -> None:
        """A line over max_request_size is refused whether its newline comes with it or later."""
        line = b"a" * (EXIM_MAX + 1)
        for chunks in ([line + b"\n"], [line, b"\n"]):
            got = run_exim(chunks, EXIM_MAX, False, False, False)
            self.assertEqual(got.calls, [])
            self.assertRegex(got.output, error_line)



class FakeLookupTests(SynchronousTestCase):
    """The fake lookup the codec tests rely on."""

    def test_modes(self) -> None:
        """Keys steer it: '~' waits for drain, '!' raises, '?' fails, others answer."""
        lookups = FakeLookups()
        self.assertEqual(lookups.socketmap(b"m", b"k"), b"OK m=k")
        pending = lookups.socketmap(b"m", b"~k")
        results: list[bytes] = []
        pending.addCallback(results.append)  # type: ignore[union-attr]
        self.assertEqual(results, [])
        lookups.drain()
        self.assertEqual(results, [b"OK m=~k"])
        self.assertRaises(LookupCrash, lookups.exim, b"!k")
        self.failureResultOf(lookups.exim(b"?k"), LookupCrash)  # type: ignore[arg-type]
