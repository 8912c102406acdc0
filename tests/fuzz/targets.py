"""
One fuzz target per codec and parser: bytes in, an `InvariantError` (or any
other exception, which is a crash too) out when the code under test breaks a
promise. The codecs are driven only through their public protocol interface
(factory, StringTransport, dataReceived, readConnectionLost) with a fake
lookup, and checked against a small model written from the specification, so
a rewrite of their internals keeps the harness valid. atheris calls these
from tests/fuzz/main.py; the normal suite replays the corpus through them.
"""

from __future__ import annotations

import json
import random
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Union

import idna
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.error import ConnectionDone
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from mxpolicyd.answers.render import postfix_match
from mxpolicyd.evidence.names import MAX_NAME_LENGTH, is_valid_hostname, normalise
from mxpolicyd.evidence.sts import (
    MAX_AGE_LIMIT,
    MAX_POLICY_SIZE,
    MODES,
    StsError,
    StsPolicy,
    StsRecord,
    mx_matches,
    parse_policy,
    parse_txt,
)
from mxpolicyd.protocols.exim import EximFactory
from mxpolicyd.protocols.socketmap import SocketmapFactory

ADDR = IPv4Address("TCP", "127.0.0.1", 40000)

# Bugs found by this harness in files its author may not change, reported
# for a fix; while suppressed, a target skips the inputs that reach them so a
# long run can look for other bugs. `run --no-suppress` turns them back on.
KNOWN_ISSUES: dict[str, str] = {}
suppressed: set[str] = set(KNOWN_ISSUES)


class InvariantError(AssertionError):
    """A target saw the code under test break one of its promises."""


class LookupCrash(RuntimeError):
    """What the fake lookups raise or fail with, so replays can flush exactly these."""


def check(condition: object, what: str, *detail: object) -> None:
    """Like assert, but not removed by ``python -O``."""
    if not condition:
        raise InvariantError(what, *detail)


def split(stream: bytes, seed: int) -> list[bytes]:
    """Cut `stream` into non-empty segments: whole for 0, bytewise for 255."""
    if seed == 0 or not stream:
        return [stream] if stream else []
    if seed == 255:
        return [stream[i : i + 1] for i in range(len(stream))]
    rng = random.Random(seed)
    chunks = []
    pos = 0
    while pos < len(stream):
        size = rng.randint(1, seed)
        chunks.append(stream[pos : pos + size])
        pos += size
    return chunks


# --- a fake lookup ------------------------------------------------------------

Answer = Union[bytes, "Deferred[bytes]"]


@dataclass
class FakeLookups:
    """
    Answers by the key's first byte: ``!`` raises, ``?`` returns a failed
    Deferred, ``~`` a Deferred fired by `drain`; any other key gets a reply
    naming the key, as bytes or (`fired`) as an already-fired Deferred.
    """

    fired: bool = False
    calls: list[tuple[bytes, ...]] = field(default_factory=list)
    pending: list[tuple[Deferred[bytes], bytes]] = field(default_factory=list)

    def socketmap(self, name: bytes, key: bytes) -> Answer:
        self.calls.append((name, key))
        return self._answer(key, socketmap_answer(name, key))

    def exim(self, key: bytes) -> Answer:
        self.calls.append((key,))
        return self._answer(key, exim_answer(key))

    def _answer(self, key: bytes, answer: bytes) -> Answer:
        first = key[:1]
        if first == b"!":
            raise LookupCrash("lookup crashed")
        if first == b"?":
            return fail(LookupCrash("lookup failed"))
        if first == b"~":
            d: Deferred[bytes] = Deferred()
            self.pending.append((d, answer))
            return d
        return succeed(answer) if self.fired else answer

    def drain(self) -> None:
        """Fire every pending answer, oldest first, until none is left."""
        while self.pending:
            d, answer = self.pending.pop(0)
            d.callback(answer)


def socketmap_answer(name: bytes, key: bytes) -> bytes:
    return b"OK " + name + b"=" + key


def exim_answer(key: bytes) -> bytes:
    return b"action=none key=" + key.hex().encode("ascii") + b"\n"


def _crashes(key: bytes) -> bool:
    return key[:1] in (b"!", b"?")


# --- the socketmap netstring codec ---------------------------------------------

SOCKETMAP_SIZES = (8, 64, 300, 10000)


@dataclass
class Expected:
    """What a model predicts for one connection."""

    calls: list[tuple[bytes, ...]]
    # (payload, exact): exact payloads must match; others are a prefix.
    replies: list[tuple[bytes, bool]]
    # The codec must close the connection (after its last reply).
    closes: bool


def socketmap_model(stream: bytes, max_size: int) -> Expected:
    """
    socketmap_table(5) framing: ``<len>:NAME SP KEY,``, length in decimal
    without leading zeros, at most six digits here, at most `max_size`. A
    complete frame is answered; framing errors get one PERM and a close;
    an incomplete frame at the end is waited for.
    """
    calls: list[tuple[bytes, ...]] = []
    replies: list[tuple[bytes, bool]] = []
    pos = 0
    while True:
        head = stream[pos : pos + 7]
        colon = head.find(b":")
        if colon < 0:
            fatal = len(head) == 7 or not (head == b"" or head.isdigit())
            return Expected(calls, replies + [(b"PERM ", False)] * fatal, fatal)
        digits = head[:colon]
        if (
            not digits.isdigit()
            or (len(digits) > 1 and digits.startswith(b"0"))
            or int(digits) > max_size
        ):
            return Expected(calls, replies + [(b"PERM ", False)], True)
        start = pos + colon + 1
        end = start + int(digits)
        if len(stream) <= end:
            return Expected(calls, replies, False)
        if stream[end : end + 1] != b",":
            return Expected(calls, replies + [(b"PERM ", False)], True)
        name, space, key = stream[start:end].partition(b" ")
        if not (name and space and key):
            replies.append((b"PERM ", False))
        else:
            calls.append((name, key))
            if _crashes(key):
                replies.append((b"TEMP ", False))
            else:
                replies.append((socketmap_answer(name, key), True))
        pos = end + 1


def netstrings(data: bytes) -> list[bytes]:
    """Split a reply stream into payloads; it must be whole netstrings only."""
    payloads = []
    while data:
        digits, colon, rest = data.partition(b":")
        check(colon and digits.isdigit() and len(digits) <= 6, "bad netstring length", data[:20])
        check(len(digits) == 1 or not digits.startswith(b"0"), "leading zero", data[:20])
        size = int(digits)
        check(rest[size : size + 1] == b",", "netstring without its comma", data[:40])
        payloads.append(rest[:size])
        data = rest[size + 1 :]
    return payloads


def match_replies(got: list[bytes], expected: list[tuple[bytes, bool]]) -> bool:
    return len(got) == len(expected) and all(
        g == e if exact else g.startswith(e) for g, (e, exact) in zip(got, expected)
    )


@dataclass
class Outcome:
    output: bytes
    closed: bool
    calls: list[tuple[bytes, ...]]


def run_socketmap(chunks: Sequence[bytes], max_size: int, fired: bool, hold: bool) -> Outcome:
    """
    Feed `chunks` to one connection. Pending lookups are answered after each
    chunk (so the split cannot matter) unless `hold`, then at the end.
    """
    clock = Clock()
    lookups = FakeLookups(fired)
    factory = SocketmapFactory(lookups.socketmap, clock, max_request_size=max_size,
                               idle_timeout=10)
    proto = factory.buildProtocol(ADDR)
    check(proto is not None, "first connection refused")
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)

    def settle() -> None:
        # Answer what is pending and let the reactor turn, which a
        # connection with many pipelined requests waits for, until quiet.
        for _ in range(100_000):
            lookups.drain()
            clock.advance(0)
            if not lookups.pending:
                return

    for chunk in chunks:
        proto.dataReceived(chunk)
        if not hold:
            settle()
    settle()
    output = transport.value()
    closed = bool(transport.disconnecting)
    if closed:
        proto.dataReceived(b"3:a b,")
        check(transport.value() == output, "a reply after the refusal", transport.value())
    else:
        clock.advance(10)
        check(transport.disconnecting, "an idle connection stays open")
        check(transport.value() == output, "output after idling")
    proto.connectionLost(Failure(ConnectionDone()))
    check(factory.limit.open == 0, "connection count", factory.limit.open)
    check(not clock.getDelayedCalls(), "timers left after the close")
    return Outcome(output, closed, lookups.calls)


def socketmap_target(data: bytes) -> None:
    """
    data[0]: bits 0-1 the size limit, bit 2 answers by fired Deferreds,
    bit 3 holds lookups while data arrives; data[1]: how to cut; the rest is
    the stream. Replies must be what the model says, in whole netstrings,
    and a split must not change them (unless held: then only a refusal of
    data sent ahead may cut them short).
    """
    if len(data) < 2:
        return
    max_size = SOCKETMAP_SIZES[data[0] & 3]
    fired = bool(data[0] & 4)
    hold = bool(data[0] & 8)
    stream = data[2:]
    expected = socketmap_model(stream, max_size)
    whole = run_socketmap([stream], max_size, fired, hold=False)
    got = netstrings(whole.output)
    check(match_replies(got, expected.replies), "replies differ from the model",
          got[:5], expected.replies[:5])
    check(whole.calls == expected.calls, "lookups differ from the model")
    check(whole.closed == expected.closes, "close differs from the model", whole.closed)
    cut = run_socketmap(split(stream, data[1]), max_size, fired, hold)
    if not hold:
        check(cut.output == whole.output, "a split changed the replies",
              cut.output[:80], whole.output[:80])
        check(cut.closed == whole.closed, "a split changed the close")
        check(cut.calls == whole.calls, "a split changed the lookups")
        return
    replies = netstrings(cut.output)
    if cut.output != whole.output:
        # Only a refusal of data sent ahead of a pending reply may differ.
        check(cut.closed and replies and replies[-1].startswith(b"PERM "),
              "held lookups changed the replies", replies[-3:])
        check(match_replies(replies[:-1], expected.replies[: len(replies) - 1]),
              "held lookups changed the replies before the refusal")


# --- the Exim readsocket codec --------------------------------------------------

EXIM_SIZES = (4, 64, 1024, 1024)
EXIM_TIMEOUT = 5
EXIM_ERROR = re.compile(rb'action=temp reason="[ !#-~]*"\n')


def exim_model(stream: bytes, max_size: int, half_close: bool) -> bytes | None:
    """
    The reply's key as Exim readsocket would see the request end (first
    newline, else the half-close), or None for an error line: empty request,
    longer than `max_size`, or no end before the timeout.
    """
    line, newline, _ = stream.partition(b"\n")
    if len(line) > max_size or not (newline or half_close):
        return None
    key = line.rstrip(b"\r").strip()
    return key or None


def run_exim(chunks: Sequence[bytes], max_size: int, fired: bool, hold: bool,
             half_close: bool) -> Outcome:
    clock = Clock()
    lookups = FakeLookups(fired)
    factory = EximFactory(lookups.exim, clock, timeout=EXIM_TIMEOUT,
                          max_request_size=max_size)
    proto = factory.buildProtocol(ADDR)
    check(proto is not None, "first connection refused")
    assert proto is not None
    transport = StringTransport()
    proto.makeConnection(transport)
    for chunk in chunks:
        proto.dataReceived(chunk)
        if not hold:
            lookups.drain()
    if half_close:
        proto.readConnectionLost()
    lookups.drain()
    if not transport.disconnecting:
        clock.advance(EXIM_TIMEOUT)
    check(transport.disconnecting, "no close after the reply or the timeout")
    output = transport.value()
    proto.dataReceived(b"late.test\n")
    lookups.drain()
    check(transport.value() == output, "a second reply", transport.value())
    proto.connectionLost(Failure(ConnectionDone()))
    check(factory.limit.open == 0, "connection count", factory.limit.open)
    check(not clock.getDelayedCalls(), "timers left after the close")
    return Outcome(output, True, lookups.calls)


def exim_target(data: bytes) -> None:
    """
    data[0]: bits 0-1 the size limit, bit 2 answers by fired Deferreds,
    bit 3 holds lookups while data arrives, bit 4 half-closes after the
    data; data[1]: how to cut; the rest is the stream. Exactly one reply
    line, the model's, whatever the cut.
    """
    if len(data) < 2:
        return
    max_size = EXIM_SIZES[data[0] & 3]
    fired = bool(data[0] & 4)
    hold = bool(data[0] & 8)
    half_close = bool(data[0] & 16)
    stream = data[2:]
    key = exim_model(stream, max_size, half_close)
    for chunks in ([stream], split(stream, data[1])):
        got = run_exim(chunks, max_size, fired, hold, half_close)
        check(got.calls == ([] if key is None else [(key,)]), "lookups differ from the model",
              got.calls, key)
        if key is None or _crashes(key):
            check(EXIM_ERROR.fullmatch(got.output), "not one error line", got.output)
        else:
            check(got.output == exim_answer(key), "not the lookup's line", got.output)


# --- the MTA-STS TXT record -------------------------------------------------------

TXT_KINDS = frozenset({"no-record", "multiple-records", "invalid-record"})
# RFC 8461 s3.1, with trailing whitespace tolerated as documented.
_RFC_FIELD = rb"[A-Za-z0-9][A-Za-z0-9_.\-]{0,31}=[\x21-\x3a\x3c\x3e-\x7e]+"
_RFC_RECORD = re.compile(
    rb"v=STSv1(?:[ \t]*;[ \t]*" + _RFC_FIELD + rb")+(?:[ \t]*;)?[ \t]*"
)
_RFC_FIELDS = re.compile(rb"[ \t]*;[ \t]*(" + _RFC_FIELD + rb")")
_RFC_ID = re.compile(rb"[A-Za-z0-9]{1,32}")


def txt_model(records: Sequence[Sequence[bytes]]) -> str | bytes:
    """The record's id, or the StsError kind that parse_txt must raise."""
    joined = [b"".join(r) for r in records]
    # An STS record starts with v=STSv1 followed by the delimiter or the end.
    sts = [r for r in joined if r.startswith(b"v=STSv1") and r[7:8] in (b"", b" ", b"\t", b";")]
    if not sts:
        return "no-record"
    if len(sts) > 1:
        return "multiple-records"
    if _RFC_RECORD.fullmatch(sts[0]) is None:
        return "invalid-record"
    ids = [f[3:] for f in _RFC_FIELDS.findall(sts[0]) if f.startswith(b"id=")]
    if not ids or not all(_RFC_ID.fullmatch(i) for i in ids):
        return "invalid-record"
    return ids[0]


def check_message(e: StsError, kinds: frozenset[str]) -> None:
    check(e.kind in kinds, "undocumented error kind", e.kind)
    check(str(e) == e.message, "str() is not the message")
    # 40 quoted characters of hostile input may take 10 characters each.
    check(e.message.isascii() and e.message.isprintable() and len(e.message) < 200,
          "message is not one bounded ASCII line", e.message)


def txt_records(data: bytes) -> list[list[bytes]]:
    """NUL separates records, \\x01 character-strings; empty input is no record."""
    return [record.split(b"\x01") for record in data.split(b"\x00")] if data else []


def txt_target(data: bytes) -> None:
    """parse_txt agrees with the RFC grammar, raises only StsError, and round-trips."""
    records = txt_records(data)
    expected = txt_model(records)
    try:
        record = parse_txt(records)
    except StsError as e:
        check_message(e, TXT_KINDS)
        check(e.kind == expected, "error kind differs from the RFC grammar", e.kind, expected)
        return
    check(isinstance(record, StsRecord), "not an StsRecord", record)
    check(record.id.encode("ascii") == expected, "id differs from the RFC grammar",
          record.id, expected)
    raw = record.text.encode("ascii")
    check(raw in (b"".join(r) for r in records), "text is not the record")
    check(parse_txt([[raw]]) == record, "the record does not parse back")
    cut = len(raw) // 2
    check(parse_txt([[b"v=spf1 -all"], [raw[:cut], raw[cut:]]]) == record,
          "character-string boundaries or another TXT record changed the result")


# --- the MTA-STS policy ---------------------------------------------------------

POLICY_KINDS = frozenset({"policy-syntax"})


def policy_outcome(body: bytes) -> StsPolicy | StsError:
    try:
        return parse_policy(body)
    except StsError as e:
        check_message(e, POLICY_KINDS)
        return e


def same(a: StsPolicy | StsError, b: StsPolicy | StsError, exact: bool = True) -> bool:
    if isinstance(a, StsError) and isinstance(b, StsError):
        return not exact or a.message == b.message
    return a == b


def check_policy(p: StsPolicy) -> None:
    """What every StsPolicy promises, and its round-trips."""
    check(p.mode in MODES and 0 <= p.max_age <= MAX_AGE_LIMIT, "bad mode or max_age", p)
    check(p.mx or p.mode == "none", "no mx outside mode none", p)
    check(len(set(p.mx)) == len(p.mx), "duplicate mx", p)
    for pattern in p.mx:
        host = pattern[2:] if pattern.startswith("*.") else pattern
        check(pattern == pattern.lower() and is_valid_hostname(host), "bad mx", pattern)
        if pattern.startswith("*."):
            check(mx_matches(pattern, "a." + host) and not mx_matches(pattern, host),
                  "wildcard does not match one label", pattern)
        else:
            check(mx_matches(pattern, pattern.upper() + "."), "mx does not match itself",
                  pattern)
    postfix_match(p.mx)
    lines = "".join(line + "\n" for line in p.canonical_lines()).encode("ascii")
    check(parse_policy(lines) == p, "canonical_lines() does not parse back", p)
    check(StsPolicy.from_json(json.loads(json.dumps(p.to_json()))) == p,
          "JSON does not round-trip", p)


def _crlf(body: bytes) -> bytes:
    """The same lines with CRLF endings: a CR added before each bare LF."""
    *lines, last = body.split(b"\n")
    return b"\n".join([line if line.endswith(b"\r") else line + b"\r" for line in lines]
                      + [last])


def policy_target(data: bytes) -> None:
    """
    parse_policy raises only policy-syntax StsErrors, its policies keep their
    promises and round-trip, and layout (CRLF, BOM, blank lines, extension
    fields) does not change the outcome. JSON input also goes through
    StsPolicy.from_json, the stored-policy parser.
    """
    result = policy_outcome(data)
    if isinstance(result, StsPolicy):
        check_policy(result)
    crlf = _crlf(data)
    if len(crlf) <= MAX_POLICY_SIZE:
        check(same(policy_outcome(crlf), result), "CRLF line ends changed the outcome")
    if not data.startswith(b"\xef\xbb\xbf") and len(data) + 3 <= MAX_POLICY_SIZE:
        check(same(policy_outcome(b"\xef\xbb\xbf" + data), result), "a BOM changed the outcome")
    if len(data) + 40 <= MAX_POLICY_SIZE:
        bom = b"\xef\xbb\xbf" if data.startswith(b"\xef\xbb\xbf") else b""
        padded = bom + b"\n \t\r\nx-ext: \xe2\x98\x83\n" + data[len(bom) :]
        if not data.endswith(b"\n"):
            padded += b"\n"
        check(same(policy_outcome(padded + b"\r\n"), result, exact=False),
              "blank lines or an extension field changed the outcome")
    if data[:1] in (b"{", b"["):
        try:
            stored = json.loads(data)
        except (ValueError, RecursionError):
            return
        try:
            p = StsPolicy.from_json(stored)
        except StsError as e:
            check_message(e, POLICY_KINDS)
        else:
            check_policy(p)


# --- domain normalisation ----------------------------------------------------------

def check_name(name: str) -> None:
    check(isinstance(name, str) and name.isascii() and name == name.lower(),
          "not a lower-case ASCII name", name)
    check(len(name) <= MAX_NAME_LENGTH and "." in name and not name.endswith("."),
          "not a dotted name of at most 253 octets", name)
    check(is_valid_hostname(name), "not an LDH host name", name)
    for label in name.split("."):
        if label.startswith("xn--"):
            try:
                canonical = idna.alabel(idna.ulabel(label)).decode("ascii")
            except (UnicodeError, ValueError) as e:
                raise InvariantError("an invalid A-label", name, e) from None
            check(canonical == label, "a non-canonical A-label", name)


def domain_target(data: bytes) -> None:
    """
    normalise never raises; it gives None or a valid lower-case A-label name;
    it is idempotent and blind to ASCII case and one trailing dot.
    """
    name = normalise(data)
    check(normalise(data.swapcase()) == name, "ASCII case changed the result",
          data.swapcase())
    if name is None:
        return
    check_name(name)
    if data.isascii():
        check(name == data.decode("ascii").lower().removesuffix("."),
              "an ASCII key is not just lower-cased", name)
    check(normalise(name.encode("ascii")) == name, "not idempotent", name)
    if "xn--" in name:
        unicode = ".".join(idna.ulabel(label) if label.startswith("xn--") else label
                           for label in name.split("."))
        check(normalise(unicode.encode("utf-8")) == name,
              "the U-label form normalises differently", unicode)
    check(normalise(name.upper().encode("ascii") + b".") == name,
          "case or a trailing dot changed the result", name)
    if data[-1:].isalnum() and len(data) < 1000:
        check(normalise(data + b".") == name, "a trailing dot changed the result")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "socketmap": socketmap_target,
    "exim": exim_target,
    "txt": txt_target,
    "policy": policy_target,
    "domain": domain_target,
}


def describe(name: str) -> str:
    doc = TARGETS[name].__doc__ or ""
    return " ".join(doc.split())


def replay(name: str, inputs: Sequence[bytes]) -> list[tuple[bytes, Any]]:
    """Run `inputs` through a target; every (input, exception) that escaped."""
    failures = []
    for data in inputs:
        try:
            TARGETS[name](data)
        except Exception as e:  # the harness reports, the caller decides
            failures.append((data, e))
    return failures
