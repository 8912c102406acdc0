"""
Assembles the test world once per session: the CA and certificates, nsd with
the DNSSEC-signed scenario zones, unbound validating them, nginx with the
scenario policy hosts, a dead resolver and a private Postfix config for
postmap; and the daemon config that points mxpolicyd at them.

Every server and daemon listens on 127.0.0.1 at a port the kernel picks,
except at the fixed addresses of addresses.py (which fail fast, naming the
holder, if another run has them): unbound on 127.0.0.35:53, nginx on
127.0.0.44:443 and the delivery tests' SMTP sinks on 127.0.0.61-70:25.

For tests of real deliveries (Postfix smtp(8) to an SMTP sink):

- ``world.resolver`` is unbound's ``(address, port)``, ``("127.0.0.35", 53)``:
  put ``nameserver 127.0.0.35`` and ``options trust-ad`` in the resolv.conf
  smtp(8) reads. It validates everything under ``test.`` and answers every
  other name itself (NXDOMAIN), so nothing leaves the machine.
- ``world.ca.issue(names, label=None) -> Pair`` issues a certificate signed
  by the test CA (``world.ca.cert_path``); a Pair unpacks as ``cert_path,
  key_path, spki_sha256`` (the cert file holds the leaf then the CA, as a
  DANE-TA record needs) and ``pair.tlsa()`` is its ``3 1 1 <spki sha256>``
  TLSA rdata. ``world.ca.tlsa()`` is ``2 1 1 <CA spki sha256>``;
  ``pki.tlsa_mismatch()`` is usable TLSA rdata that matches no key;
  ``pki.tlsa_rdata(usage, selector, mtype, x509_cert)`` any other.
- ``world.certificates["mx"]`` is already issued for every MX host of the
  DANE scenarios (``scenarios.DANE_MX_HOSTS``), whose TLSA records match it
  (or the CA); a sink presenting it passes their DANE checks.
- ``world.nsd.update({"owner": ["TLSA 3 1 1 ...", ...]})`` (owners relative
  to ``test.``; an empty list deletes) changes the zones, re-signs them and
  returns once nsd serves them; unbound caches for at most a second.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

import dns.exception
import dns.rcode

from . import scenarios
from .addresses import POLICY_ADDRESS, POLICY_PORT, RESOLVER_ADDRESS, RESOLVER_PORT
from .daemon import Daemon, make_postfix_config, merge
from .pki import CertificateAuthority, Pair
from .servers import DeadResolver, Nginx, Nsd, Unbound, wait_until

Config = Mapping[str, Mapping[str, Any]]


@dataclass
class World:
    directory: Path
    ca: CertificateAuthority
    certificates: dict[str, Pair]
    nsd: Nsd
    unbound: Unbound
    nginx: Nginx
    dead_dns: DeadResolver
    postfix_config: Path
    _daemons: int = field(default=0)

    @property
    def resolver(self) -> tuple[str, int]:
        """The validating resolver's address and port."""
        return (self.unbound.host, self.unbound.port)

    def config(self, state_directory: Path, *overrides: Config) -> dict[str, dict[str, Any]]:
        """
        A daemon config using unbound (the AD bit is trusted only from a local
        validating resolver) and the test CA, with ``overrides`` merged in.
        """
        base: Config = {
            "daemon": {"state_directory": str(state_directory)},
            "lookup": {"deadline": 3.0},
            "dns": {
                "nameservers": [self.unbound.host],
                "port": self.unbound.port,
                "timeout": 1.0,
                "attempts": 2,
            },
            "mta_sts": {
                "trust_root": str(self.ca.cert_path),
                "fetch_timeout": 10.0,
                "block_private": False,
                "txt_ttl_min": 1,
                "txt_ttl_max": 3600,
                "retry_interval": 300,
            },
            "dane": {"enabled": True, "ttl_min": 1, "ttl_max": 3600},
        }
        return merge(base, *overrides)

    @contextlib.contextmanager
    def dns_paused(self) -> Iterator[None]:
        """
        nsd stopped (queries time out) for the block; afterwards, wait until
        unbound resolves the test zone again: it remembers an unresponsive
        server for a moment, and the next test must not inherit SERVFAILs.
        """
        with self.nsd.paused():
            yield

        def healthy() -> bool:
            try:
                return self.unbound.query("test.", "SOA", timeout=0.5).rcode() == dns.rcode.NOERROR
            except dns.exception.Timeout:
                return False

        wait_until(healthy, 15.0, "unbound to resolve test. again after nsd was paused")

    def dead_dns_config(self) -> Config:
        """The override that sends every DNS query to a server that never answers."""
        return {
            "dns": {
                "nameservers": [self.dead_dns.host],
                "port": self.dead_dns.port,
                "timeout": 0.5,
                "attempts": 1,
            }
        }

    def no_dane_config(self) -> Config:
        """The override that turns DANE off, leaving MTA-STS alone."""
        return {"dane": {"enabled": False}}

    def new_daemon(
        self,
        state_directory: Path | None = None,
        *overrides: Config,
        listen: Sequence[str] | None = None,
    ) -> Daemon:
        """
        A (not yet started) daemon with its own directory and, by default, a
        fresh store; ``listen`` (endpoint strings) by default one free port.
        """
        self._daemons += 1
        directory = self.directory / "daemons" / f"d{self._daemons}"
        if state_directory is None:
            state_directory = directory / "state"
        state_directory.mkdir(parents=True, exist_ok=True)
        return Daemon(
            directory, self.config(state_directory, *overrides), self.postfix_config, listen
        )


@contextlib.contextmanager
def running_world(directory: Path) -> Iterator[World]:
    """Start every server of the test world; stop them all on exit."""
    ca = CertificateAuthority(directory / "pki")
    certificates = {
        "good": ca.issue(scenarios.GOOD_CERT_HOSTS, label="good"),
        "wrong": ca.issue([scenarios.WRONG_CERT_NAME], label="wrong"),
        "expired": ca.issue(
            ["mta-sts.expired.test"], label="expired", valid_days=(-30, -1)
        ),
        "mx": ca.issue(scenarios.DANE_MX_HOSTS, label="mx"),
    }
    records = scenarios.zone_records(certificates["mx"].tlsa(), ca.tlsa())
    nsd = Nsd(directory / "nsd", records, scenarios.CHILD_ZONES)
    at_nsd = f"{nsd.host}@{nsd.port}"
    # unbound reaches each zone nsd serves directly: a delegation's glue
    # cannot say which port nsd listens on.
    unbound = Unbound(
        directory / "unbound",
        RESOLVER_ADDRESS,
        RESOLVER_PORT,
        nsd.trust_anchor,
        {zone: at_nsd for zone in nsd.zones},
    )
    nginx = Nginx(
        directory / "nginx", POLICY_ADDRESS, scenarios.SITES, certificates, POLICY_PORT
    )
    dead = DeadResolver()
    with contextlib.ExitStack() as stack:
        stack.callback(dead.close)
        stack.callback(nsd.stop)
        nsd.start()
        stack.callback(unbound.stop)
        unbound.start()
        stack.callback(nginx.stop)
        nginx.start()
        yield World(
            directory=directory,
            ca=ca,
            certificates=certificates,
            nsd=nsd,
            unbound=unbound,
            nginx=nginx,
            dead_dns=dead,
            postfix_config=make_postfix_config(directory / "postfix"),
        )
