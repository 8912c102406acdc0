"""
Assembles the test world once per session: the CA and certificates, nsd with
the scenario zone, nginx with the scenario policy hosts, a dead resolver and
a private Postfix config for postmap; and the daemon config that points
mxpolicyd at them.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

from . import scenarios
from .daemon import Daemon, make_postfix_config, merge
from .pki import CertificateAuthority
from .servers import DeadResolver, Nginx, Nsd

Config = Mapping[str, Mapping[str, Any]]


@dataclass
class World:
    directory: Path
    ca: CertificateAuthority
    nsd: Nsd
    nginx: Nginx
    dead_dns: DeadResolver
    postfix_config: Path
    _daemons: int = field(default=0)

    def config(self, state_directory: Path, *overrides: Config) -> dict[str, dict[str, Any]]:
        """A daemon config using nsd and the test CA, with ``overrides`` merged in."""
        base: Config = {
            "daemon": {"state_directory": str(state_directory)},
            "lookup": {"deadline": 3.0},
            "dns": {
                "nameservers": ["127.0.0.1"],
                "port": self.nsd.port,
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
        }
        return merge(base, *overrides)

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

    def new_daemon(self, state_directory: Path | None = None, *overrides: Config) -> Daemon:
        """A (not yet started) daemon with its own directory and, by default, a fresh store."""
        self._daemons += 1
        directory = self.directory / "daemons" / f"d{self._daemons}"
        if state_directory is None:
            state_directory = directory / "state"
        state_directory.mkdir(parents=True, exist_ok=True)
        return Daemon(
            directory, self.config(state_directory, *overrides), self.postfix_config
        )


@contextlib.contextmanager
def running_world(directory: Path) -> Iterator[World]:
    """Start every server of the test world; stop them all on exit."""
    ca = CertificateAuthority(directory / "pki")
    certificates = {
        "good": ca.issue("good", scenarios.GOOD_CERT_HOSTS),
        "wrong": ca.issue("wrong", [scenarios.WRONG_CERT_NAME]),
        "expired": ca.issue("expired", ["mta-sts.expired.test"], valid_days=(-30, -1)),
    }
    nsd = Nsd(directory / "nsd", scenarios.RECORDS)
    nginx = Nginx(directory / "nginx", scenarios.POLICY_ADDRESS, scenarios.SITES, certificates)
    dead = DeadResolver()
    with contextlib.ExitStack() as stack:
        stack.callback(dead.close)
        stack.callback(nsd.stop)
        nsd.start()
        stack.callback(nginx.stop)
        nginx.start()
        yield World(
            directory=directory,
            ca=ca,
            nsd=nsd,
            nginx=nginx,
            dead_dns=dead,
            postfix_config=make_postfix_config(directory / "postfix"),
        )
