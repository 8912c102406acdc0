#!/usr/bin/python3
"""
The world bench/compare runs both daemons against: a DNS server and an HTTPS
policy server on loopback, each counting the requests it sees, so that
coalescing and retry behaviour is measured where it matters, at the servers.

    servers.py dns   ADDRESS PORT HTTPS_ADDRESS  # authoritative for bench.test
    servers.py https ADDRESS PORT CA_DIR         # CA_DIR/ca.pem and ca.key

Each prints ``control PORT`` once listening; the control port (127.0.0.1)
takes lines: ``stats`` (a JSON object of counters), ``reset``, and for the
HTTPS server ``prepare NAME...`` (issue certificates ahead of a workload so
that cold fetches do not pay for them).

Names (labels under bench.test):
  <d>.bench.test                MX 10 mx1.<d>.bench.test (no AD bit: DANE is
                                insecure, so DANE-aware daemons stop there)
  _mta-sts.<d>.bench.test       TXT "v=STSv1; id=1" (TTL 60 when <d> starts
                                with "stale", else 3600); NXDOMAIN for "none*"
  mta-sts.<d>.bench.test        A <https address>; AAAA none
The HTTPS server answers an enforce policy for mta-sts.<d>.bench.test, 500
when <d> starts with "fail500", and a certificate for the wrong name when it
starts with "tlsfail".
"""

from __future__ import annotations

import datetime
import json
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import dns.flags
import dns.message
import dns.rcode
import dns.rdataclass
import dns.rdatatype
import dns.rrset
from twisted.internet import protocol, reactor
from twisted.protocols.basic import Int16StringReceiver, LineReceiver

ZONE = "bench.test."
COUNTS: Counter[str] = Counter()


class Control(LineReceiver):
    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        words = line.decode().split()
        if not words:
            return
        if words[0] == "stats":
            self.sendLine(json.dumps(COUNTS).encode())
        elif words[0] == "reset":
            COUNTS.clear()
            self.sendLine(b"ok")
        elif words[0] == "prepare" and PREPARE is not None:
            for name in words[1:]:
                PREPARE(name)
            self.sendLine(b"ok")
        else:
            self.sendLine(b"error")


PREPARE: Any = None


def listen_control() -> None:
    f = protocol.Factory.forProtocol(Control)
    f.noisy = False
    port = reactor.listenTCP(0, f, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("control %d" % port.getHost().port, flush=True)


# ---------------------------------------------------------------- DNS

def answer(wire: bytes, https_address: str) -> bytes | None:
    try:
        query = dns.message.from_wire(wire)
    except Exception:
        return None
    response = dns.message.make_response(query)
    response.flags |= dns.flags.AA
    if not query.question:
        response.set_rcode(dns.rcode.FORMERR)
        return response.to_wire()
    q = query.question[0]
    name = q.name.to_text().lower()
    qtype = dns.rdatatype.to_text(q.rdtype)
    COUNTS["%s %s" % (qtype, name.rstrip("."))] += 1
    COUNTS["total"] += 1
    if not name.endswith("." + ZONE):
        response.set_rcode(dns.rcode.REFUSED)
        return response.to_wire()
    labels = name[: -len(ZONE) - 1].split(".")
    rdata: list[str] = []
    ttl = 3600
    exists = True
    if labels[0] == "_mta-sts" and len(labels) == 2:
        if labels[1].startswith("none"):
            exists = False
        elif q.rdtype == dns.rdatatype.TXT:
            rdata = ['"v=STSv1; id=1"']
            ttl = 60 if labels[1].startswith("stale") else 3600
    elif labels[0] == "mta-sts" and len(labels) == 2:
        if q.rdtype == dns.rdatatype.A:
            rdata = [https_address]
    elif len(labels) == 1:
        if q.rdtype == dns.rdatatype.MX:
            rdata = ["10 mx1.%s.%s" % (labels[0], ZONE)]
    if not exists:
        response.set_rcode(dns.rcode.NXDOMAIN)
    if rdata:
        response.answer.append(dns.rrset.from_text_list(
            q.name, ttl, dns.rdataclass.IN, q.rdtype, rdata))
    else:
        response.authority.append(dns.rrset.from_text(
            ZONE, 3600, dns.rdataclass.IN, dns.rdatatype.SOA,
            "ns.%s h.%s 1 3600 600 86400 60" % (ZONE, ZONE)))
    return response.to_wire()


class DNSUDP(protocol.DatagramProtocol):
    noisy = False

    def __init__(self, https_address: str) -> None:
        self.https_address = https_address

    def datagramReceived(self, data: bytes, addr: Any) -> None:
        out = answer(data, self.https_address)
        if out is not None:
            self.transport.write(out, addr)


class DNSTCP(Int16StringReceiver):
    def stringReceived(self, data: bytes) -> None:
        out = answer(data, self.factory.https_address)  # type: ignore[attr-defined]
        if out is not None:
            self.sendString(out)


def run_dns(address: str, port: int, https_address: str) -> None:
    reactor.listenUDP(port, DNSUDP(https_address), interface=address)  # type: ignore[attr-defined]
    f = protocol.Factory.forProtocol(DNSTCP)
    f.noisy = False
    f.https_address = https_address  # type: ignore[attr-defined]
    reactor.listenTCP(port, f, interface=address)  # type: ignore[attr-defined]


# ---------------------------------------------------------------- HTTPS

def run_https(address: str, port: int, ca_dir: Path) -> None:
    global PREPARE
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID
    from OpenSSL import SSL, crypto
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    ca_key = serialization.load_pem_private_key((ca_dir / "ca.key").read_bytes(), None)
    ca_cert = x509.load_pem_x509_certificate((ca_dir / "ca.pem").read_bytes())
    # One key for every leaf: issuing is then a signature, not a key generation.
    leaf_key = ec.generate_private_key(ec.SECP256R1())
    pkey = crypto.PKey.from_cryptography_key(leaf_key)
    now = datetime.datetime.now(datetime.timezone.utc)
    contexts: dict[str, SSL.Context] = {}

    def context(name: str) -> SSL.Context:
        ctx = contexts.get(name)
        if ctx is None:
            cert = (
                x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
                .issuer_name(ca_cert.subject)
                .public_key(leaf_key.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(now - datetime.timedelta(days=1))
                .not_valid_after(now + datetime.timedelta(days=7))
                .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), False)
                .sign(ca_key, hashes.SHA256())  # type: ignore[arg-type]
            )
            ctx = SSL.Context(SSL.TLS_SERVER_METHOD)
            ctx.set_min_proto_version(SSL.TLS1_2_VERSION)
            ctx.use_certificate(crypto.X509.from_cryptography(cert))
            ctx.use_privatekey(pkey)
            contexts[name] = ctx
        return ctx

    def for_host(host: str) -> str:
        label = host.split(".")[1] if host.count(".") >= 2 else ""
        return "wrong.bench.test" if label.startswith("tlsfail") else host

    def prepare(host: str) -> None:
        context(for_host(host))

    PREPARE = prepare

    def servername(conn: SSL.Connection) -> None:
        host = (conn.get_servername() or b"").decode("ascii", "replace").lower()
        COUNTS["tls " + host] += 1
        conn.set_context(context(for_host(host)))

    default = context("default.bench.test")
    default.set_tlsext_servername_callback(servername)

    class ContextFactory:
        def getContext(self) -> SSL.Context:
            return default

    class Policy(Resource):
        isLeaf = True

        def render_GET(self, request: Any) -> bytes:
            host = (request.getHeader(b"host") or b"").decode("ascii", "replace")
            host = host.split(":")[0].lower()
            COUNTS["GET " + host] += 1
            COUNTS["fetches"] += 1
            labels = host.split(".")
            if request.path != b"/.well-known/mta-sts.txt" or len(labels) < 3:
                request.setResponseCode(404)
                return b"not found\n"
            d = labels[1]
            if d.startswith("fail500"):
                request.setResponseCode(500)
                return b"server error\n"
            request.setHeader(b"content-type", b"text/plain")
            return (
                "version: STSv1\nmode: enforce\nmx: mx1.%s.bench.test\n"
                "mx: *.mx.%s.bench.test\nmax_age: 604800\n" % (d, d)
            ).encode()

    site = Site(Policy())
    site.noisy = False
    site.log = lambda request: None  # type: ignore[method-assign]
    reactor.listenSSL(port, site, ContextFactory(), interface=address)  # type: ignore[attr-defined]


def make_ca(directory: Path) -> None:
    """A CA for the bench: ca.pem (what both daemons trust) and ca.key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mxpolicyd bench CA")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                       critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (directory / "ca.key").write_bytes(key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()))


def main() -> None:
    kind, address, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if not address.startswith("127."):
        raise SystemExit("bench servers listen on loopback only")
    if kind == "dns":
        run_dns(address, port, sys.argv[4])
    elif kind == "https":
        run_https(address, port, Path(sys.argv[4]))
    else:
        raise SystemExit("usage: servers.py dns|https ADDRESS PORT ARG")
    listen_control()
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
