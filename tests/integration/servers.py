"""
The outside world the daemon talks to, run for real on loopback: Debian's nsd
as the authoritative server for the DNSSEC-signed ``test.`` zone and its child
zones, Debian's unbound as the local validating resolver in front of it,
Debian's nginx as every ``mta-sts.<domain>.test`` policy host, a resolver
that never answers, and Debian's redis-server for the shared store (at a free
port). The fixed addresses some of them take are in addresses.py.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import dns.exception
import dns.flags
import dns.message
import dns.query
import dns.rdatatype

from .addresses import DEAD_ADDRESS, POLICY_PORT, ensure_free
from .dnssec import SigningKey, sign_zone
from .pki import Pair

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """
    Run in a child before exec: if the test run is killed, its servers get
    SIGTERM instead of lingering on their ports.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port(host: str = "127.0.0.1", *, udp_too: bool = False) -> int:
    """A port nothing listens on yet (TCP, and UDP as well if asked)."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            tcp.bind((host, 0))
            port = tcp.getsockname()[1]
            if udp_too:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
            return int(port)
        finally:
            tcp.close()
            udp.close()
    raise RuntimeError("no free port found on " + host)


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, interval: float = 0.05
) -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def child_pids(pid: int) -> set[int]:
    """The live (not zombie) processes whose parent is ``pid``."""
    children = set()
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != "Z" and int(fields[1]) == pid:
            children.add(int(stat.parent.name))
    return children


def accepts_connections(host: str, port: int) -> bool:
    """Whether a TCP connect to host:port succeeds right now."""
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


class ServerProcess:
    """
    A foreground server in its own process group, output to a log file, so
    that it can be paused, stopped and its log shown when a test fails.
    """

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.argv = list(argv)
        self.log = log
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with self.log.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=die_with_parent,
            )

    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def check_running(self) -> None:
        if not self.running():
            raise RuntimeError(
                f"{self.name} exited ({self.process and self.process.returncode}):\n"
                + self.log_text()
            )

    def signal_group(self, signum: int) -> None:
        """Send ``signum`` to every process of this server (nsd and nginx fork)."""
        assert self.process is not None
        os.killpg(self.process.pid, signum)

    def stop(self, timeout: float = 10.0) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGCONT)
            process.terminate()
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout)

    def log_text(self, limit: int = 20000) -> str:
        try:
            data = self.log.read_bytes()
        except OSError:
            return ""
        return data[-limit:].decode("utf-8", "replace")


# --- DNS -------------------------------------------------------------------

ZONE = "test."

# How the parent ``test.`` vouches for a child zone nsd also serves.
SECURE = "secure"  # signed, the parent publishes its key's DS
INSECURE = "insecure"  # unsigned, no DS in the parent: provably insecure
BOGUS = "bogus"  # signed, but the parent's DS is that of a key that signs nothing


@dataclass(frozen=True)
class ChildZone:
    """A zone delegated from ``test.`` (``<label>.test.``) and served by the same nsd."""

    label: str
    security: str

    @property
    def name(self) -> str:
        return f"{self.label}.{ZONE}"


class Nsd:
    """
    nsd on 127.0.0.1 (UDP and TCP) at a free port, authoritative for the
    signed zone ``test.`` and for its ``children``. ``records`` maps owner
    names relative to ``test.`` (``"@"`` for the apex) to RR texts such as
    ``'TXT "v=STSv1; id=1"'``; an owner at or under a child's label goes to
    that child's zone, and names in RR data are relative to ``test.`` too.
    Every zone is re-signed whenever it is written, so ``update`` keeps the
    chain of trust valid.
    """

    def __init__(
        self,
        directory: Path,
        records: Mapping[str, Sequence[str]],
        children: Sequence[ChildZone] = (),
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = "127.0.0.1"
        self.port = free_port(self.host, udp_too=True)
        self.records: dict[str, list[str]] = {k: list(v) for k, v in records.items()}
        self.children = list(children)
        self.serial = 1
        self._mtime = time.time() - 1000
        self.config_path = directory / "nsd.conf"
        keys = directory / "keys"
        # The key that signs each signed zone, and the one whose DS its parent
        # publishes: the same, except in a bogus zone.
        self.signing_keys: dict[str, SigningKey] = {ZONE: SigningKey.generate(ZONE, keys)}
        self.ds_keys: dict[str, SigningKey] = {}
        for child in self.children:
            if child.security == INSECURE:
                continue
            key = SigningKey.generate(child.name, keys)
            self.signing_keys[child.name] = key
            self.ds_keys[child.name] = (
                key if child.security == SECURE else SigningKey.generate(child.name, keys)
            )
        self.server = ServerProcess(
            "nsd", ["/usr/sbin/nsd", "-d", "-c", str(self.config_path)], directory / "nsd.log"
        )

    @property
    def zones(self) -> list[str]:
        return [ZONE] + [c.name for c in self.children]

    @property
    def trust_anchor(self) -> str:
        """The DS of ``test.``'s key, for a validating resolver."""
        return self.signing_keys[ZONE].trust_anchor()

    def zone_path(self, zone: str) -> Path:
        return self.directory / f"{zone}zone"

    def _write_config(self) -> None:
        d = self.directory
        zones = "".join(
            f"""zone:
    name: "{zone}"
    zonefile: "{self.zone_path(zone)}"
"""
            for zone in self.zones
        )
        self.config_path.write_text(
            f"""server:
    ip-address: {self.host}
    port: {self.port}
    do-ip6: no
    username: ""
    chroot: ""
    server-count: 1
    database: ""
    zonelistfile: "{d}/zone.list"
    xfrdfile: "{d}/xfrd.state"
    xfrdir: "{d}"
    pidfile: "{d}/nsd.pid"
    cookie-secret-file: "{d}/cookiesecrets.txt"
    hide-version: yes
    verbosity: 1
    minimal-responses: yes
remote-control:
    control-enable: no
{zones}"""
        )

    def _zone_of(self, owner: str) -> str:
        for child in self.children:
            if owner == child.label or owner.endswith("." + child.label):
                return child.name
        return ZONE

    def _zone_lines(self) -> dict[str, list[str]]:
        def head(zone: str) -> list[str]:
            ns = "ns" if zone == ZONE else f"ns.{zone[: -len(ZONE) - 1]}"
            return [
                f"$ORIGIN {ZONE}",
                "$TTL 1",
                f"{zone} 1 IN SOA {ns}.{ZONE} hostmaster.{ZONE} {self.serial} 1 1 60 1",
                f"{zone} 1 IN NS {ns}.{ZONE}",
                f"{ns} 1 IN A {self.host}",
            ]

        lines = {zone: head(zone) for zone in self.zones}
        for child in self.children:
            # The delegation, its glue, and for a signed child the DS.
            lines[ZONE].append(f"{child.label} 1 IN NS ns.{child.name}")
            lines[ZONE].append(f"ns.{child.label} 1 IN A {self.host}")
            if child.name in self.ds_keys:
                lines[ZONE].append(f"{child.label} 1 IN DS {self.ds_keys[child.name].ds}")
        for owner in sorted(self.records):
            name = ZONE if owner == "@" else owner
            for rr in self.records[owner]:
                lines[self._zone_of(owner)].append(f"{name} 1 IN {rr}")
        return lines

    def _write_zones(self) -> None:
        for zone, lines in self._zone_lines().items():
            path = self.zone_path(zone)
            unsigned = path.with_suffix(".unsigned")
            unsigned.write_text("\n".join(lines) + "\n")
            tmp = path.with_suffix(".tmp")
            if zone in self.signing_keys:
                sign_zone(unsigned, tmp, zone, [self.signing_keys[zone]])
            else:
                unsigned.replace(tmp)
            tmp.replace(path)
            # nsd reloads a zone file only when its mtime changed; a rewrite
            # within the same second must still look newer.
            self._mtime = max(self._mtime + 2, time.time())
            os.utime(path, (self._mtime, self._mtime))

    def start(self) -> None:
        self._write_config()
        self._write_zones()
        self.server.start()
        self._wait_for_serial(15.0)

    def stop(self) -> None:
        self.server.stop()

    def query(
        self, name: str, rdtype: str = "A", timeout: float = 1.0, *, dnssec: bool = False
    ) -> dns.message.Message:
        """Ask nsd directly (UDP), for tests that check the fixture itself."""
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), want_dnssec=dnssec)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

    def _serves_serial(self) -> bool:
        self.server.check_running()
        for zone in self.zones:
            try:
                r = self.query(zone, "SOA", timeout=0.3)
            except (dns.exception.Timeout, OSError):
                return False
            if not any(
                rdata.serial == self.serial for rrset in r.answer for rdata in rrset
            ):
                return False
        return True

    def _wait_for_serial(self, timeout: float) -> None:
        try:
            wait_until(self._serves_serial, timeout, f"nsd to serve serial {self.serial}")
        except TimeoutError as e:
            raise RuntimeError(f"{e}\nnsd log:\n{self.server.log_text()}") from None

    def update(self, records: Mapping[str, Sequence[str]]) -> None:
        """
        Replace the RRs of the given owners (an empty list deletes them),
        re-sign, and wait until nsd answers from the new zones; SIGHUP
        first, restart if the reload is not seen in time.
        """
        for owner, rrs in records.items():
            if rrs:
                self.records[owner] = list(rrs)
            else:
                self.records.pop(owner, None)
        self.serial += 1
        self._write_zones()
        assert self.server.process is not None
        self.server.process.send_signal(signal.SIGHUP)
        try:
            wait_until(self._serves_serial, 5.0, "nsd reload")
        except TimeoutError:
            self.server.stop()
            self.server.start()
            self._wait_for_serial(15.0)

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """Stop every nsd process (SIGSTOP): queries time out until the block ends."""
        self.server.signal_group(signal.SIGSTOP)
        try:
            yield
        finally:
            self.server.signal_group(signal.SIGCONT)


class Unbound:
    """
    unbound as the local validating resolver on ``address``:``port`` (UDP and
    TCP): it trusts only ``trust_anchor`` (the DS of ``test.``), reaches the
    zones in ``stubs`` (zone -> ``"IP@port"``) directly, answers every other
    name itself (NXDOMAIN from a static local zone) so no query ever leaves
    the machine, and caches for at most a second so zone updates show at once.
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        port: int,
        trust_anchor: str,
        stubs: Mapping[str, str],
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.host = address
        self.port = port
        self.trust_anchor = trust_anchor
        self.stubs = dict(stubs)
        self.config_path = directory / "unbound.conf"
        self.log = directory / "unbound.log"
        self.server = ServerProcess(
            "unbound",
            ["/usr/sbin/unbound", "-d", "-c", str(self.config_path)],
            directory / "unbound.out",
        )

    def _write_config(self) -> None:
        d = self.directory
        # Root hints naming only a loopback address nothing listens on: were
        # unbound ever to prime the root, the packet would stay on the machine.
        root_hints = d / "root.hints"
        root_hints.write_text(f". 3600 NS root.invalid.\nroot.invalid. 3600 A {DEAD_ADDRESS}\n")
        stubs = "".join(
            f"""stub-zone:
    name: "{zone}"
    stub-addr: {addr}
"""
            for zone, addr in self.stubs.items()
        )
        transparent = "".join(
            f'    local-zone: "{zone}" transparent\n' for zone in self.stubs
        )
        # Retransmit timeouts capped at 400 ms, and unreachable servers
        # forgotten after 2 s: servfail.test., whose nameserver is silent,
        # SERVFAILs in under a second (unbound would drop the reply to a
        # client after 1.9 s, its discard-timeout), and a paused nsd is
        # asked again as soon as it resumes.
        self.config_path.write_text(
            f"""server:
    interface: {self.host}
    port: {self.port}
    do-ip4: yes
    do-ip6: no
    do-udp: yes
    do-tcp: yes
    access-control: 127.0.0.0/8 allow
    num-threads: 1
    directory: "{d}"
    chroot: ""
    username: ""
    pidfile: "{d}/unbound.pid"
    use-syslog: no
    logfile: "{self.log}"
    log-time-ascii: yes
    verbosity: 1
    val-log-level: 2
    log-servfail: yes
    root-hints: "{root_hints}"
    do-not-query-localhost: no
    module-config: "validator iterator"
    trust-anchor: "{self.trust_anchor}"
    trust-anchor-signaling: no
    root-key-sentinel: no
    qname-minimisation: no
    aggressive-nsec: no
    prefetch: no
    cache-min-ttl: 0
    cache-max-ttl: 1
    cache-max-negative-ttl: 1
    val-bogus-ttl: 1
    infra-host-ttl: 2
    infra-keep-probing: yes
    unknown-server-time-limit: 200
    infra-cache-max-rtt: 400
    outgoing-num-tcp: 10
    incoming-num-tcp: 10
    local-zone: "." static
{transparent}{stubs}remote-control:
    control-enable: no
"""
        )

    def start(self) -> None:
        self._write_config()
        ensure_free(self.host, self.port, "unbound", udp=True)
        self.server.start()

        def validates() -> bool:
            self.server.check_running()
            try:
                r = self.query(ZONE, "SOA", timeout=0.3)
            except (dns.exception.Timeout, OSError):
                return False
            return bool(r.flags & dns.flags.AD)

        try:
            wait_until(validates, 15.0, f"unbound on {self.host}:{self.port} to validate {ZONE}")
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}\nunbound log:\n{self.log_text()}") from None

    def stop(self) -> None:
        self.server.stop()

    def query(self, name: str, rdtype: str = "A", timeout: float = 2.0) -> dns.message.Message:
        """Ask unbound with the DO bit set (UDP), as the daemon does."""
        q = dns.message.make_query(name, dns.rdatatype.from_text(rdtype), want_dnssec=True)
        return dns.query.udp(q, self.host, port=self.port, timeout=timeout)

    def log_text(self, limit: int = 20000) -> str:
        """Its log file, then anything it wrote to stdout/stderr before opening it."""
        try:
            data = self.log.read_bytes()
        except OSError:
            data = b""
        return data[-limit:].decode("utf-8", "replace") + self.server.log_text(limit)


class DeadResolver:
    """
    A nameserver address that swallows every query: a bound UDP socket that
    is never read and a TCP listener that never accepts, so a client sees a
    timeout, not a refusal.
    """

    def __init__(self, host: str = "127.0.0.1") -> None:
        self.host = host
        self.port = free_port(host, udp_too=True)
        self._udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self._udp.bind((host, self.port))
        self._tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._tcp.bind((host, self.port))
        self._tcp.listen(64)

    def close(self) -> None:
        self._udp.close()
        self._tcp.close()


# --- HTTPS -----------------------------------------------------------------


class Site:
    """
    One policy host ``mta-sts.<domain>`` as nginx serves it. ``body`` None
    means no policy file (404); ``redirect`` answers every path with a 301.
    """

    def __init__(
        self,
        domain: str,
        body: str | bytes | None = None,
        *,
        certificate: str = "good",
        content_type: str = "text/plain",
        redirect: str | None = None,
    ) -> None:
        self.domain = domain
        self.host = "mta-sts." + domain
        self.body = body
        self.certificate = certificate
        self.content_type = content_type
        self.redirect = redirect


class Nginx:
    """
    nginx on ``address``:``port`` with one TLS ``server`` per policy host,
    the certificate chosen by SNI; ``certificates`` maps a Site's
    certificate label to its PEM pair. ``add_site`` adds a host while it runs.
    """

    def __init__(
        self,
        directory: Path,
        address: str,
        sites: Sequence[Site],
        certificates: Mapping[str, Pair],
        port: int = POLICY_PORT,
    ) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)
        self.address = address
        self.port = port
        self.sites = {s.domain: s for s in sites}
        self.certificates = dict(certificates)
        self.www = directory / "www"
        self.config_path = directory / "nginx.conf"
        self.server = ServerProcess(
            "nginx",
            [
                "/usr/sbin/nginx",
                "-p", str(directory),
                "-c", str(self.config_path),
                "-e", str(directory / "error.log"),
                "-g", "daemon off;",
            ],
            directory / "nginx.out",
        )

    def policy_path(self, domain: str) -> Path:
        return self.www / self.sites[domain].host / ".well-known" / "mta-sts.txt"

    def set_policy(self, domain: str, body: str | bytes | None) -> None:
        """Replace (or with None delete) the policy file one host serves."""
        path = self.policy_path(domain)
        path.parent.mkdir(parents=True, exist_ok=True)
        if body is None:
            path.unlink(missing_ok=True)
            return
        data = body.encode("ascii") if isinstance(body, str) else body
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)

    def add_site(self, site: Site, pair: Pair, timeout: float = 10.0) -> None:
        """
        Serve one more policy host (or replace one), presenting ``pair``.
        Workers read the sites and certificates when they start, so this
        reloads nginx (SIGHUP to the master) and returns only once every old
        worker has exited: no later request can meet the old certificate set.
        """
        master = self.server.process
        if master is None or not self.server.running():
            raise RuntimeError("nginx is not running: add_site needs a started Nginx")
        self.certificates[site.certificate] = pair
        self.sites[site.domain] = site
        self._publish(site)
        self._write_config()
        old_workers = child_pids(master.pid)
        master.send_signal(signal.SIGHUP)

        def reloaded() -> bool:
            self.server.check_running()
            workers = child_pids(master.pid)
            return bool(workers) and not workers & old_workers

        try:
            wait_until(reloaded, timeout, f"nginx to serve {site.host} from new workers only")
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}\nnginx error log:\n{self.error_log()}") from None

    def _publish(self, site: Site) -> None:
        """Create the host's document root, with its policy file if it has one."""
        (self.www / site.host).mkdir(parents=True, exist_ok=True)
        self.set_policy(site.domain, site.body)

    def _server_block(self, site: Site) -> str:
        pair = self.certificates[site.certificate]
        if site.redirect is not None:
            location = f"location / {{ return 301 {site.redirect}; }}"
        else:
            location = (
                "location = /.well-known/mta-sts.txt "
                f"{{ default_type {site.content_type}; }}\n"
                "        location / { return 404; }"
            )
        return f"""
    server {{
        listen {self.address}:{self.port} ssl;
        server_name {site.host};
        ssl_certificate {pair.cert};
        ssl_certificate_key {pair.key};
        root {self.www / site.host};
        {location}
    }}"""

    def _write_config(self) -> None:
        d = self.directory
        fallback = self.certificates["good"]
        servers = "".join(self._server_block(s) for s in self.sites.values())
        self.config_path.write_text(
            f"""user root root;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    log_format mxpolicyd '$ssl_server_name $status $body_bytes_sent "$request"';
    access_log {d}/access.log mxpolicyd;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    types {{ }}
    default_type text/plain;
    server_tokens off;
    etag off;
    ssl_protocols TLSv1.2 TLSv1.3;
    server {{
        listen {self.address}:{self.port} ssl default_server;
        server_name _;
        ssl_certificate {fallback.cert};
        ssl_certificate_key {fallback.key};
        return 421;
    }}{servers}
}}
"""
        )

    def start(self) -> None:
        (self.directory / "tmp").mkdir(exist_ok=True)
        for site in self.sites.values():
            self._publish(site)
        self._write_config()
        ensure_free(self.address, self.port, "nginx")
        self.server.start()

        def up() -> bool:
            self.server.check_running()
            return accepts_connections(self.address, self.port)

        try:
            wait_until(up, 15.0, f"nginx on {self.address}:{self.port}")
        except (TimeoutError, RuntimeError) as e:
            raise RuntimeError(f"{e}\nnginx error log:\n{self.error_log()}") from None

    def stop(self) -> None:
        self.server.stop()

    def error_log(self) -> str:
        try:
            return (self.directory / "error.log").read_text(errors="replace")[-20000:]
        except OSError:
            return self.server.log_text()

    def access_log_tail(self, lines: int = 40) -> str:
        return "\n".join(self._access_log().splitlines()[-lines:])

    def requests_for(self, domain: str) -> list[str]:
        """Access-log lines (SNI, status, bytes, request line) for one policy host."""
        host = self.sites[domain].host
        return [line for line in self._access_log().splitlines() if line.split(" ", 1)[0] == host]

    def _access_log(self) -> str:
        try:
            return (self.directory / "access.log").read_text(errors="replace")
        except OSError:
            return ""


REDIS_SERVER = "/usr/bin/redis-server"
REDIS_CLI = "/usr/bin/redis-cli"


class RedisServer:
    """redis-server on 127.0.0.1 at a free port, in the foreground, without persistence."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.port = free_port()
        self.endpoint = f"tcp:127.0.0.1:{self.port}"
        self.server = ServerProcess(
            "redis-server",
            [
                REDIS_SERVER,
                "--bind", "127.0.0.1",
                "--port", str(self.port),
                "--save", "",
                "--appendonly", "no",
                "--daemonize", "no",
                "--dir", str(directory),
                "--logfile", "",
            ],
            directory / "redis.log",
        )

    def start(self) -> None:
        self.server.start()

        def up() -> bool:
            self.server.check_running()
            try:
                return self.cli("PING") == "PONG"
            except subprocess.SubprocessError:
                return False

        wait_until(up, 10.0, f"redis-server on port {self.port}")

    def stop(self) -> None:
        self.server.stop()

    def cli(self, *args: str) -> str:
        """``redis-cli --raw ARGS``: the reply as text (empty for nil)."""
        r = subprocess.run(
            [REDIS_CLI, "-h", "127.0.0.1", "-p", str(self.port), "--raw", *args],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=5,
        )
        return r.stdout.rstrip("\n")

    def state(self, key: str) -> dict[str, Any] | None:
        """The stored JSON value of a domain key, if any."""
        text = self.cli("GET", key)
        return json.loads(text) if text else None

    @contextlib.contextmanager
    def paused(self) -> Iterator[None]:
        """SIGSTOP: connections stay open but nothing is answered until the block ends."""
        self.server.signal_group(signal.SIGSTOP)
        try:
            yield
        finally:
            self.server.signal_group(signal.SIGCONT)
