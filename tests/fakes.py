"""Fakes of the world the evaluators talk to: DNS and HTTPS, scripted."""

from __future__ import annotations

from typing import Any

import dns.rcode
import dns.rdata
import dns.rdataclass
import dns.rdatatype
from twisted.internet.defer import Deferred, fail, succeed

from mxpolicyd.net.dns import Answer, DNSError
from mxpolicyd.net.https import FetchError

TXT = dns.rdatatype.TXT


def txt(*records: str, ttl: int = 300, secure: bool = False, name: str = "") -> Answer:
    """A TXT answer holding one record per argument."""
    rdatas = tuple(
        dns.rdata.from_text(dns.rdataclass.IN, TXT, '"%s"' % r) for r in records
    )
    return Answer(
        name=name,
        rdtype=TXT,
        rcode=dns.rcode.NOERROR,
        records=rdatas,
        ttl=ttl,
        secure=secure,
        canonical_name=name,
        cnames=(),
    )


def nxdomain(ttl: int = 60) -> Answer:
    return Answer("", TXT, dns.rcode.NXDOMAIN, (), ttl, False, "", ())


def policy(mode: str = "enforce", mx: tuple[str, ...] = ("mx1.example.test", "*.example.net"),
           max_age: int = 86400) -> bytes:
    lines = ["version: STSv1", "mode: " + mode]
    lines += ["mx: " + m for m in mx]
    lines.append("max_age: %d" % max_age)
    return ("\r\n".join(lines) + "\r\n").encode("ascii")


class FakeResolver:
    """Answers from a dict; an Exception value is raised, a Deferred returned."""

    def __init__(self) -> None:
        self.answers: dict[tuple[str, int], Any] = {}
        self.queries: list[tuple[str, int]] = []

    def query(self, name: str, rdtype: int) -> Deferred[Answer]:
        self.queries.append((name, rdtype))
        answer = self.answers.get((name, rdtype))
        if answer is None:
            return succeed(nxdomain())
        if isinstance(answer, Deferred):
            return answer
        if isinstance(answer, Exception):
            return fail(answer)
        return succeed(answer)

    def fail(self, name: str, rdtype: int = TXT, kind: str = "timeout") -> None:
        self.answers[(name, rdtype)] = DNSError(name, rdtype, kind, "%s for %s" % (kind, name))


class FakeFetcher:
    """Serves policy bodies by domain; an Exception value is raised."""

    def __init__(self) -> None:
        self.bodies: dict[str, Any] = {}
        self.fetches: list[str] = []

    def fetch(self, domain: str) -> Deferred[bytes]:
        self.fetches.append(domain)
        body = self.bodies.get(domain)
        if body is None:
            return fail(FetchError(domain, "status", "mta-sts.%s: HTTP 404" % domain))
        if isinstance(body, Deferred):
            return body
        if isinstance(body, Exception):
            return fail(body)
        return succeed(body)


def answer(name: str, rdtype: int, *texts: str, secure: bool = True, ttl: int = 300,
           canonical: str | None = None) -> Answer:
    """A positive answer of any type, records given in zone-file text."""
    rdatas = tuple(dns.rdata.from_text(dns.rdataclass.IN, rdtype, t) for t in texts)
    canonical = canonical or name
    return Answer(name, rdtype, dns.rcode.NOERROR, rdatas, ttl, secure, canonical,
                  () if canonical == name else (canonical,))


def empty(name: str, rdtype: int, secure: bool = True, ttl: int = 60,
          rcode: int = dns.rcode.NOERROR) -> Answer:
    """NODATA (or NXDOMAIN with rcode=) with its negative TTL."""
    return Answer(name, rdtype, rcode, (), ttl, secure, name, ())
