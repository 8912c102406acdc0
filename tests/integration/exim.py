"""
Debian's Exim 4.96 for the Exim tests, run with the contrib/exim fragments.
exim4-daemon-light conflicts with the postfix package, so it is never
installed: its .deb files are fetched with ``apt-get download`` and unpacked
with ``dpkg-deb -x`` into a cache once (``ensure_exim``).  Each command runs
in a private mount namespace (``unshare -m``) whose /etc/resolv.conf names
the world's validating resolver with ``trust-ad``, so Exim's libc lookups
never reach the system resolver, and whose /etc/passwd and /etc/group add
the user the binary was built to run as (Debian-exim), so the host needs no
such account.  Root runs ``exim4 -C FILE``; the configuration's ``exim_path``
names a copy of the binary, which Exim re-executes to deliver (as
Debian-exim, hence "exim user lost privilege for using -C option" in the
log, which is harmless here).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from .daemon import REPO_ROOT

CONTRIB = REPO_ROOT / "contrib" / "exim" / "conf.d"
# Unpacked once per machine; .gitignore keeps it out of the repository.
CACHE = REPO_ROOT / ".cache" / "exim"
PACKAGES = ("exim4-base", "exim4-config", "exim4-daemon-light")
EXIM_USER = "Debian-exim"
HOSTNAME = "exim.mxpolicyd.test"
SENDER = f"sender@{HOSTNAME}"


class EximError(Exception):
    pass


def _run(argv: Sequence[str], cwd: Path | None = None, timeout: float = 300.0) -> str:
    r = subprocess.run(
        list(argv), cwd=cwd, capture_output=True, text=True, timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    if r.returncode != 0:
        raise EximError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return r.stdout


def ensure_exim(cache: Path = CACHE) -> Path:
    """
    The unpacked tree holding ``usr/sbin/exim4``: downloaded and unpacked on
    first use (``apt-get update`` once if the package lists lack it), then
    reused.  Fails naming any shared library the binary cannot find.
    """
    tree = cache / "tree"
    binary = tree / "usr" / "sbin" / "exim4"
    if not binary.exists():
        debs = cache / "debs"
        debs.mkdir(parents=True, exist_ok=True)
        # apt's sandbox user must be able to write the download directory.
        debs.chmod(0o777)
        try:
            _run(["apt-get", "download", *PACKAGES], cwd=debs)
        except EximError:
            _run(["apt-get", "update", "-q"])
            _run(["apt-get", "download", *PACKAGES], cwd=debs)
        partial = Path(tempfile.mkdtemp(prefix="tree.", dir=cache))
        for name in PACKAGES:
            (deb,) = sorted(debs.glob(f"{name}_*.deb"))[-1:]
            _run(["dpkg-deb", "-x", str(deb), str(partial)])
        shutil.rmtree(tree, ignore_errors=True)
        partial.rename(tree)
    missing = [
        line.split()[0]
        for line in _run(["ldd", str(binary)]).splitlines()
        if "not found" in line
    ]
    if missing:
        raise EximError(
            f"{binary} needs {', '.join(missing)}: run tests/run as root to install "
            "the Debian packages listed there"
        )
    return tree


@dataclass(frozen=True)
class Attempt:
    """One delivery attempt of one message, as Exim's mainlog records it."""

    message_id: str
    # "=>" delivered, "==" deferred, "**" failed (bounced)
    flag: str
    recipient: str
    fields: dict[str, str]
    reason: str
    line: str

    @property
    def delivered(self) -> bool:
        return self.flag == "=>"

    @property
    def deferred(self) -> bool:
        return self.flag == "=="


_FIELD = re.compile(r'(\w+)=("[^"]*"|\[[^\]]*\]|\S+)')


def _free_id(path: str, wanted: int) -> int:
    """The highest id up to ``wanted`` that /etc/passwd (or /etc/group) does not use."""
    lines = Path(path).read_text().splitlines()
    taken = {line.split(":")[2] for line in lines if line.count(":") >= 3}
    while str(wanted) in taken:
        wanted -= 1
    return wanted


class Exim:
    """
    One Exim configuration in ``directory``: spool, log, the namespace's
    files and ``exim.conf``, which includes the contrib fragments and asks
    the daemon at ``socket`` (a readsocket spec).
    """

    def __init__(
        self,
        directory: Path,
        tree: Path,
        *,
        nameserver: str,
        ca_file: Path,
        socket: str,
    ) -> None:
        self.directory = directory
        self.tree = tree
        # A copy in ``directory``: Exim re-executes itself as Debian-exim,
        # which may not reach the cache (a repository under /root, say).
        self.binary = directory / "exim4"
        self.nameserver = nameserver
        self.socket = socket
        self.spool = directory / "spool"
        self.log_dir = directory / "log"
        self.mainlog = self.log_dir / "mainlog"
        self.config = directory / "exim.conf"
        self.ca_file = directory / "ca.pem"
        self._source_ca = ca_file
        self.etc = directory / "etc"

    def setup(self) -> Exim:
        """
        Write the namespace's files, the config and a CA copy, and give
        Exim's user (which delivers) the spool and log directories.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        # Exim's unprivileged processes read the config and the CA.
        self.directory.chmod(0o755)
        uid = _free_id("/etc/passwd", 60999)
        gid = _free_id("/etc/group", 60999)
        self.etc.mkdir(exist_ok=True)
        passwd = Path("/etc/passwd").read_text()
        group = Path("/etc/group").read_text()
        (self.etc / "passwd").write_text(
            passwd + f"{EXIM_USER}:x:{uid}:{gid}:Exim:/nonexistent:/usr/sbin/nologin\n"
        )
        (self.etc / "group").write_text(group + f"{EXIM_USER}:x:{gid}:\n")
        (self.etc / "resolv.conf").write_text(
            f"nameserver {self.nameserver}\noptions trust-ad attempts:1 timeout:3\n"
        )
        for path in self.etc.iterdir():
            path.chmod(0o644)
        shutil.copy2(self.tree / "usr" / "sbin" / "exim4", self.binary)
        shutil.copyfile(self._source_ca, self.ca_file)
        self.ca_file.chmod(0o644)
        for d in (self.spool, self.log_dir):
            d.mkdir(exist_ok=True)
            os.chown(d, uid, gid)
            d.chmod(0o750)
        self.config.write_text(self.config_text())
        self.config.chmod(0o644)
        return self

    def config_text(self) -> str:
        """A minimal main section, then the contrib fragments where Debian puts them."""
        return f"""\
keep_environment =
# Exim re-executes itself (with this config) to deliver: not /usr/sbin/exim4.
exim_path = {self.binary}
primary_hostname = {HOSTNAME}
qualify_domain = {HOSTNAME}
spool_directory = {self.spool}
log_file_path = {self.log_dir}/%slog
log_selector = +tls_sni +tls_certificate_verified +tls_peerdn +received_recipients
domainlist local_domains = {HOSTNAME}
# The test overrides, as an administrator's local macros would be.
.ifndef MXPOLICYD_SOCKET
MXPOLICYD_SOCKET = {self.socket}
.endif
MXPOLICYD_TLS_VERIFY_CERTIFICATES = {self.ca_file}
# The sinks are on 127.0.0.61-70; ignore part of loopback all the same,
# to show that the address list still applies on top of the MX patterns.
MXPOLICYD_IGNORE_TARGET_HOSTS = <; 0.0.0.0 ; 127.0.0.0/27
.include {CONTRIB / "main" / "05_mxpolicyd_macros"}

begin routers
.include {CONTRIB / "router" / "190_mxpolicyd"}

# What Debian's router/200_exim4-config_primary does, minus its ignored
# loopback addresses.
dnslookup:
  driver = dnslookup
  domains = ! +local_domains
  transport = remote_smtp
  same_domain_copy_routing = yes
  no_more

begin transports
remote_smtp:
  driver = smtp
  tls_verify_certificates = {self.ca_file}

.include {CONTRIB / "transport" / "30_mxpolicyd"}

begin retry
# Deferred mail waits (a day); nothing bounces during a test.
* * F,1d,10m
"""

    # --- running -------------------------------------------------------------

    def command(
        self, *args: str, input: str | None = None, config: Path | None = None,
        timeout: float = 60.0,
    ) -> subprocess.CompletedProcess[str]:
        """``exim4 -C exim.conf ARGS`` in the private mount namespace."""
        argv = [str(self.binary), "-C", str(config or self.config), *args]
        return self.namespaced(argv, input=input, timeout=timeout)

    def namespaced(
        self, argv: Sequence[str], *, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """
        Run ``argv`` in a private mount namespace where /etc/resolv.conf
        names only the test resolver and /etc/passwd knows Debian-exim.
        """
        script = (
            'mount --bind "$1" /etc/resolv.conf && mount --bind "$2" /etc/passwd '
            '&& mount --bind "$3" /etc/group && shift 3 && exec "$@"'
        )
        full = [
            "unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh",
            str(self.etc / "resolv.conf"), str(self.etc / "passwd"), str(self.etc / "group"),
            *argv,
        ]
        return subprocess.run(
            full, input=input, stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True, text=True, timeout=timeout,
        )

    def expand(self, *strings: str, macros: dict[str, str] | None = None) -> list[str]:
        """``exim -be``: each string expanded, one output line each."""
        defines = [f"-D{k}={v}" for k, v in (macros or {}).items()]
        r = self.command(*defines, "-be", *strings)
        if r.returncode != 0:
            raise EximError(f"exim -be exited {r.returncode}:\n{r.stdout}{r.stderr}")
        return r.stdout.splitlines()

    def send(self, recipient: str, macros: dict[str, str] | None = None) -> str:
        """
        Submit one message and deliver it at once in the foreground
        (``-odf``); its message id, read from the mainlog.
        """
        message_id = f"{uuid.uuid4().hex}@{HOSTNAME}"
        text = (
            f"From: <{SENDER}>\nTo: <{recipient}>\nSubject: test\n"
            f"Message-ID: <{message_id}>\n\nA delivery test of mxpolicyd with Exim.\n"
        )
        defines = [f"-D{k}={v}" for k, v in (macros or {}).items()]
        r = self.command(*defines, "-odf", "-oi", "-f", SENDER, "--", recipient, input=text)
        if r.returncode != 0:
            raise EximError(f"exim exited {r.returncode}:\n{r.stdout}{r.stderr}\n{self.log_tail()}")
        match = re.search(r"(\S+) <= \S+ .*id=" + re.escape(message_id), self.log_text())
        if match is None:
            raise EximError(f"no <= line for <{message_id}>:\n{self.log_tail()}")
        return match.group(1)

    def attempts(self, exim_id: str) -> list[Attempt]:
        """Every delivery attempt logged for ``exim_id``, oldest first."""
        found = []
        pattern = re.compile(
            r"^\S+ \S+ " + re.escape(exim_id) + r" (=>|==|\*\*) (\S+) (.*)$"
        )
        for line in self.log_text().splitlines():
            match = pattern.match(line)
            if not match:
                continue
            rest = match.group(3)
            reason = rest.partition(": ")[2]
            fields = {k: v.strip('"') for k, v in _FIELD.findall(rest)}
            found.append(Attempt(exim_id, match.group(1), match.group(2), fields, reason, line))
        return found

    def queue(self) -> str:
        """``exim -bp``: the queue listing."""
        return self.command("-bp").stdout

    def remove_if_queued(self, exim_id: str) -> None:
        """``exim -Mrm``: a deferred message is retried no more."""
        if exim_id in self.queue():
            self.command("-Mrm", exim_id)

    def log_text(self) -> str:
        try:
            return self.mainlog.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def debian_config(
    exim: Exim, directory: Path, local_macros: str, *, split: bool
) -> Path:
    """
    Debian's own configuration with the contrib fragments installed as
    contrib/exim/README.md says, generated by Debian's update-exim4.conf
    from a copy of the package's /etc/exim4: split, the three files dropped
    into conf.d/; unsplit, the routers and transports pasted into
    exim4.conf.template and the macros appended to exim4.conf.localmacros.
    ``local_macros`` come first, as an administrator's own.  The script's
    fixed paths (/etc/mailname, /etc/exim4/exim4.conf.localmacros) are
    pointed into ``directory``.
    """
    confdir = directory / "exim4"
    shutil.copytree(exim.tree / "etc" / "exim4", confdir)
    macros = (CONTRIB / "main" / "05_mxpolicyd_macros").read_text()
    routers = (CONTRIB / "router" / "190_mxpolicyd").read_text()
    transports = (CONTRIB / "transport" / "30_mxpolicyd").read_text()
    localmacros = confdir / "exim4.conf.localmacros"
    if split:
        (confdir / "conf.d" / "main" / "000_localmacros").write_text(local_macros)
        for section in ("main", "router", "transport"):
            for source in (CONTRIB / section).iterdir():
                shutil.copyfile(source, confdir / "conf.d" / section / source.name)
    else:
        localmacros.write_text(local_macros + macros)
        template = confdir / "exim4.conf.template"
        text = template.read_text()
        router_mark = "### end router/150_exim4-config_hubbed_hosts\n"
        transport_mark = "\nbegin transports\n"
        assert text.count(router_mark) == 1 and text.count(transport_mark) == 1
        text = text.replace(router_mark, router_mark + routers + "\n")
        text = text.replace(transport_mark, transport_mark + transports + "\n")
        template.write_text(text)
    (confdir / "update-exim4.conf.conf").write_text(
        "dc_eximconfig_configtype='internet'\n"
        f"dc_other_hostnames='{HOSTNAME}'\n"
        "dc_local_interfaces='127.0.0.1'\ndc_readhost=''\ndc_relay_domains=''\n"
        "dc_minimaldns='false'\ndc_relay_nets=''\ndc_smarthost=''\nCFILEMODE='644'\n"
        f"dc_use_split_config='{'true' if split else 'false'}'\n"
        "dc_hide_mailname=''\ndc_mailname_in_oh='true'\ndc_localdelivery='mail_spool'\n"
    )
    mailname = directory / "mailname"
    mailname.write_text(HOSTNAME + "\n")
    script = directory / "update-exim4.conf"
    script.write_text(
        (exim.tree / "usr" / "sbin" / "update-exim4.conf").read_text()
        .replace("/etc/mailname", str(mailname))
        .replace("/etc/exim4/exim4.conf.localmacros", str(localmacros))
    )
    output = directory / "exim4.conf"
    r = exim.namespaced(
        ["bash", str(script), "--confdir", str(confdir), "--output", str(output)]
    )
    if r.returncode != 0:
        raise EximError(f"update-exim4.conf exited {r.returncode}:\n{r.stdout}{r.stderr}")
    return output
