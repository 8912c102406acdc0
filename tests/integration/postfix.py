"""
A private Postfix instance that really delivers: Debian's Postfix 3.7 with its
own config, queue and log under the test session's directory, smtp(8)
chrooted as Debian ships it, asking mxpolicyd over ``smtp_tls_policy_maps``
and resolving MX, A and TLSA through the validating resolver. The tests
inject mail with sendmail(1) and read the outcome from the maillog, so the
daemon's answers are judged by what Postfix does with them.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
POSTQUEUE = "/usr/sbin/postqueue"
POSTSUPER = "/usr/sbin/postsuper"
SENDMAIL = "/usr/sbin/sendmail"

MYHOSTNAME = "client.test"
SENDER = f"sender@{MYHOSTNAME}"

# Services as in Debian's master.cf, smtp(8) chrooted (column 5 "y"), the
# rest not, so that only smtp needs the chroot's copy of /etc.
_MASTER_CF = """\
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       y       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

# Of the files Debian's configure-instance.sh puts into the chroot, these are
# copied from the host; resolv.conf, hosts, host.conf and nsswitch.conf are
# written instead, so that no lookup can reach the host's resolver or NSS
# modules. glibc >= 2.34 has the files and dns NSS modules built in, so no
# libraries are needed.
_CHROOT_COPIES = ["etc/services", "etc/localtime"]

_STATUS = re.compile(
    r" postfix(?P<service>(?:/[\w-]+)+)\[(?P<pid>\d+)\]: (?P<qid>[0-9A-Za-z]+): "
    r"to=<(?P<to>[^>]*)>,(?P<fields>.*?) status=(?P<status>\w+) \((?P<reason>.*)\)$"
)
_FIELD = re.compile(r" (\w+)=([^,]*),")
_PROCESS = re.compile(r" postfix(?P<service>(?:/[\w-]+)+)\[(?P<pid>\d+)\]: ")


class PostfixError(RuntimeError):
    """A Postfix command failed; the message holds its output and the log tail."""


@dataclass(frozen=True)
class Delivery:
    """
    One delivery attempt of one recipient as smtp(8) logged it: ``status``
    is ``sent``, ``deferred``, ``bounced`` or ``expired``, ``reason`` the text
    in parentheses, ``log`` that smtp process's lines for the attempt (TLS
    and policy warnings included).
    """

    queue_id: str
    recipient: str
    status: str
    dsn: str
    relay: str
    reason: str
    log: tuple[str, ...]

    def __str__(self) -> str:
        return f"{self.queue_id} to=<{self.recipient}> status={self.status} ({self.reason})"


class Postfix:
    """
    One Postfix instance in ``directory``: config in ``etc``, queue (and
    smtp's chroot) in ``spool``, data in ``lib``, log in ``maillog``.

    It asks the daemon at fixed endpoints, so that daemons can come and go
    without a reload: ``127.0.0.1:policy_port`` and the unix socket
    ``policy_socket``. The default smtp transport uses
    ``socketmap:inet:127.0.0.1:PORT:NAME``; mail sent with
    ``send(..., transport=PROXY_UNIX)`` goes through a transport using
    ``proxy:socketmap:unix:PATH:NAME``, with ``transport=CHROOT_UNIX``
    through one using ``socketmap:unix:PATH:NAME`` (which a chrooted smtp(8)
    cannot reach). ``settings`` override main.cf parameters.
    """

    PROXY_UNIX = "smtp-proxy-unix"
    CHROOT_UNIX = "smtp-chroot-unix"

    def __init__(
        self,
        directory: Path,
        *,
        ca_file: Path,
        nameserver: str,
        policy_port: int,
        policy_socket: Path,
        map_name: str = "postfix",
        settings: Mapping[str, str] | None = None,
    ) -> None:
        self.directory = directory
        self.config_dir = directory / "etc"
        self.queue_dir = directory / "spool"
        self.data_dir = directory / "lib"
        self.maillog = directory / "maillog"
        self.ca_file = ca_file
        self.nameserver = nameserver
        self.policy_port = policy_port
        self.policy_socket = policy_socket
        self.policy_maps = f"socketmap:inet:127.0.0.1:{policy_port}:{map_name}"
        unix_map = f"socketmap:unix:{policy_socket}:{map_name}"
        self.transports = {
            self.PROXY_UNIX: {"smtp_tls_policy_maps": "proxy:" + unix_map},
            self.CHROOT_UNIX: {"smtp_tls_policy_maps": unix_map},
        }
        self.settings = dict(settings or {})
        self.running = False

    def policy_listen(self) -> list[str]:
        """The daemon's ``socketmap.listen`` for the endpoints this instance asks."""
        return [
            f"tcp:{self.policy_port}:interface=127.0.0.1",
            f"unix:{self.policy_socket}:mode=666",
        ]

    # --- configuration -----------------------------------------------------

    def main_cf(self) -> dict[str, str]:
        proxied = [
            value
            for value in [self.policy_maps]
            + [o.get("smtp_tls_policy_maps", "") for o in self.transports.values()]
            if value.startswith("proxy:")
        ]
        default_proxy_read_maps = _postconf_default("proxy_read_maps")
        params = {
            "compatibility_level": "3.6",
            "queue_directory": str(self.queue_dir),
            "data_directory": str(self.data_dir),
            "mail_owner": "postfix",
            "setgid_group": "postdrop",
            "inet_interfaces": "loopback-only",
            "inet_protocols": "ipv4",
            "myhostname": MYHOSTNAME,
            "mydomain": MYHOSTNAME,
            "myorigin": MYHOSTNAME,
            "mydestination": "",
            "mynetworks": "127.0.0.0/8",
            "relayhost": "",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:5.1.1 local delivery is disabled",
            "append_dot_mydomain": "no",
            "biff": "no",
            "notify_classes": "",
            "enable_long_queue_ids": "yes",
            "maillog_file": str(self.maillog),
            "maillog_file_prefixes": str(self.directory),
            # Deferrals are retried soon, and nothing bounces during a test:
            # a bounce is always a failure, never a slow deferral.
            "queue_run_delay": "2s",
            "minimal_backoff_time": "2s",
            "maximal_backoff_time": "4s",
            "maximal_queue_lifetime": "1d",
            "bounce_queue_lifetime": "1d",
            "delay_warning_time": "0h",
            # One try per attempt, no connection reuse across tests' domains.
            "smtp_connect_timeout": "5s",
            "smtp_connection_cache_on_demand": "no",
            "smtp_tls_connection_reuse": "no",
            # DNSSEC and TLS as SPEC.md s4 asks of a DANE-capable Postfix 3.7.
            "smtp_dns_support_level": "dnssec",
            "dnssec_probe": "ns:test.",
            "smtp_tls_security_level": "may",
            "smtp_tls_CAfile": str(self.ca_file),
            "smtp_tls_dane_insecure_mx_policy": "dane",
            "smtp_tls_loglevel": "1",
            "smtp_tls_policy_maps": self.policy_maps,
            "proxy_read_maps": " ".join([default_proxy_read_maps] + proxied),
            "sender_dependent_default_transport_maps": (
                f"texthash:{self.config_dir / 'sender_transport'}"
            ),
        }
        params.update(self.settings)
        return params

    def master_cf(self) -> str:
        lines = [_MASTER_CF]
        for name, options in self.transports.items():
            lines.append(f"{name} unix  -       -       y       -       -       smtp\n")
            lines.append(f"  -o syslog_name=postfix/{name}\n")
            for key, value in options.items():
                if any(c.isspace() for c in value):
                    raise ValueError(f"master.cf -o {key}={value!r}: no spaces allowed")
                lines.append(f"  -o {key}={value}\n")
        return "".join(lines)

    def _write_config(self) -> None:
        self.config_dir.mkdir(parents=True, exist_ok=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.chown(self.data_dir, "postfix", "postfix")
        (self.config_dir / "main.cf").write_text(
            "".join(f"{key} = {value}\n" for key, value in self.main_cf().items())
        )
        (self.config_dir / "master.cf").write_text(self.master_cf())
        (self.config_dir / "sender_transport").write_text(
            "".join(f"{self.sender(name)} {name}\n" for name in self.transports)
        )

    def _write_chroot(self) -> None:
        """
        What smtp(8) reads after chroot(2): above all resolv.conf naming the
        validating resolver, with ``trust-ad`` so that glibc passes the AD bit.
        """
        etc = self.queue_dir / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        for name in _CHROOT_COPIES:
            source = Path("/") / name
            if source.exists():
                shutil.copyfile(source, self.queue_dir / name)
        files = {
            "resolv.conf": (
                f"nameserver {self.nameserver}\noptions trust-ad attempts:1 timeout:3\n"
            ),
            "hosts": "127.0.0.1 localhost\n",
            "host.conf": "multi on\n",
            "nsswitch.conf": "passwd: files\ngroup: files\nhosts: files dns\n"
            "services: files\nprotocols: files\n",
        }
        for name, text in files.items():
            (etc / name).write_text(text)
        for path in etc.iterdir():
            path.chmod(0o644)

    # --- running -------------------------------------------------------------

    def command(
        self,
        argv: Sequence[str],
        *,
        input: str | None = None,
        check: bool = True,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run a Postfix command against this instance's config directory."""
        env = dict(os.environ, MAIL_CONFIG=str(self.config_dir))
        r = subprocess.run(
            list(argv),
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
        )
        if check and r.returncode != 0:
            raise PostfixError(
                f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}\n"
                f"maillog tail:\n{self.log_tail()}"
            )
        return r

    def start(self) -> Postfix:
        """Write the config and the chroot, ``postfix check``, then ``postfix start``."""
        self._allow_traversal()
        self._write_config()
        self.queue_dir.mkdir(parents=True, exist_ok=True)
        self.queue_dir.chmod(0o755)
        self._write_chroot()
        # The daemon's socket lives here; proxymap(8) reaches it as user postfix.
        self.policy_socket.parent.mkdir(parents=True, exist_ok=True)
        self.policy_socket.parent.chmod(0o755)
        self.command([POSTFIX, "-c", str(self.config_dir), "check"])
        self.command([POSTFIX, "-c", str(self.config_dir), "start"])
        self.running = True
        return self

    def stop(self) -> None:
        """``postfix stop`` (which waits, then kills), ``postfix abort`` if the master lives on."""
        if not self.running:
            return
        self.running = False
        r = self.command([POSTFIX, "-c", str(self.config_dir), "stop"], check=False)
        if r.returncode != 0 and self._master_alive():
            self.command([POSTFIX, "-c", str(self.config_dir), "abort"], check=False)

    def _master_alive(self) -> bool:
        try:
            pid = int((self.queue_dir / "pid" / "master.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True

    def _allow_traversal(self) -> None:
        """
        Postfix's unprivileged processes (proxymap connecting to the daemon's
        socket, postlogd, tlsmgr) use paths under ``directory`` after dropping
        root; pytest's directories are 0700, so give others search (not read)
        permission on the chain up to the system's temporary directory.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        top = Path(tempfile.gettempdir()).resolve()
        path = self.directory.resolve()
        while path != top and top in path.parents:
            mode = path.stat().st_mode
            if not mode & 0o001:
                path.chmod((mode & 0o7777) | 0o011)
            path = path.parent

    # --- mail ----------------------------------------------------------------

    def sender(self, transport: str | None = None) -> str:
        """The envelope sender that routes mail through ``transport``."""
        return SENDER if transport is None else f"{transport}@{MYHOSTNAME}"

    def send(
        self,
        recipient: str,
        *,
        transport: str | None = None,
        subject: str = "test",
        timeout: float = 10.0,
    ) -> str:
        """Submit one message with sendmail(1); its queue id once cleanup has it."""
        message_id = f"{uuid.uuid4().hex}@{MYHOSTNAME}"
        sender = self.sender(transport)
        text = (
            f"From: <{sender}>\nTo: <{recipient}>\nSubject: {subject}\n"
            f"Message-ID: <{message_id}>\n\nA delivery test of mxpolicyd.\n"
        )
        self.command(
            [SENDMAIL, "-C", str(self.config_dir), "-f", sender, "-i", "--", recipient],
            input=text,
        )
        pattern = re.compile(r": ([0-9A-Za-z]+): message-id=<" + re.escape(message_id) + ">")
        deadline = time.monotonic() + timeout
        while True:
            match = pattern.search(self.log_text())
            if match:
                return match.group(1)
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"no queue id logged for <{message_id}> within {timeout} s:\n"
                    + self.log_tail()
                )
            time.sleep(0.05)

    def wait_for(self, queue_id: str, timeout: float = 30.0, attempt: int = 1) -> Delivery:
        """
        The ``attempt``-th delivery attempt logged for ``queue_id`` (the
        first by default; ``flush`` hastens later ones); fail after ``timeout``.
        """
        deadline = time.monotonic() + timeout
        while True:
            deliveries = self.deliveries(queue_id)
            if len(deliveries) >= attempt:
                return deliveries[attempt - 1]
            if time.monotonic() > deadline:
                raise PostfixError(
                    f"no delivery attempt logged for {queue_id} within {timeout} s:\n"
                    f"{self.log_tail()}\nqueue: {self.queue()}"
                )
            time.sleep(0.1)

    def deliveries(self, queue_id: str) -> list[Delivery]:
        """Every delivery attempt logged so far for ``queue_id``, oldest first."""
        lines = self.log_text().splitlines()
        found = []
        for i, line in enumerate(lines):
            match = _STATUS.search(line)
            if not match or match.group("qid") != queue_id:
                continue
            fields = dict(_FIELD.findall(match.group("fields") + ","))
            found.append(
                Delivery(
                    queue_id=queue_id,
                    recipient=match.group("to"),
                    status=match.group("status"),
                    dsn=fields.get("dsn", ""),
                    relay=fields.get("relay", ""),
                    reason=match.group("reason"),
                    log=tuple(self._attempt_lines(lines, i, match.group("pid"))),
                )
            )
        return found

    @staticmethod
    def _attempt_lines(lines: list[str], end: int, pid: str) -> list[str]:
        """The lines of smtp process ``pid`` up to line ``end``, since its previous status line."""
        collected = [lines[end]]
        for line in reversed(lines[:end]):
            match = _PROCESS.search(line)
            if not match or match.group("pid") != pid:
                continue
            if _STATUS.search(line):
                break
            collected.append(line)
        collected.reverse()
        return collected

    def flush(self) -> None:
        """``postqueue -f``: attempt every queued message now."""
        self.command([POSTQUEUE, "-c", str(self.config_dir), "-f"])

    def queue(self) -> list[dict[str, object]]:
        """``postqueue -j``: the queued messages as JSON objects."""
        r = self.command([POSTQUEUE, "-c", str(self.config_dir), "-j"])
        return [json.loads(line) for line in r.stdout.splitlines() if line.strip()]

    def delete(self, queue_id: str) -> None:
        """``postsuper -d``: remove a message, so a deferred one is retried no more."""
        self.command([POSTSUPER, "-c", str(self.config_dir), "-d", queue_id], check=False)

    # --- log -------------------------------------------------------------------

    def log_text(self) -> str:
        try:
            return self.maillog.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _postconf_default(name: str) -> str:
    r = subprocess.run(
        [POSTCONF, "-d", "-h", name], capture_output=True, text=True, check=True,
        stdin=subprocess.DEVNULL,
    )
    return r.stdout.strip()

