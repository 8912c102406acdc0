"""
Configuration: one TOML file, read with tomllib and validated as a whole.

Every other module takes plain values from a L{Config}; nothing else reads
the file.  Validation happens once, at start-up (and later on reload), and an
error names the file, the key and what would be accepted, so that an
administrator can fix it without reading code.
"""

from __future__ import annotations

import os
import pwd
import re
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

from mxpolicyd.answers.profiles import BUILTIN_PROFILES, Profile
from mxpolicyd.config.admin import parse_admin
from mxpolicyd.config.sections import ConfigError, Section, list_of
from mxpolicyd.policy.admin import AdminPolicy

DEFAULT_PATH = "/etc/mxpolicyd/mxpolicyd.toml"
DEFAULT_LISTEN = ("tcp:8461:interface=127.0.0.1",)
# The mode of a unix: lookup listener whose string gives none: the daemon's
# user and group.  Twisted's own default, 666, would let every local user
# ask.
UNIX_LISTEN_MODE = "660"


@dataclass(frozen=True)
class SocketmapConfig:
    listen: tuple[str, ...] = DEFAULT_LISTEN
    max_request_size: int = 10000
    idle_timeout: float = 60.0
    max_connections: int = 1000
    # Seconds from a request's first byte to its last: a client dripping
    # bytes must not hold a connection slot.
    request_timeout: float = 10.0


@dataclass(frozen=True)
class EximConfig:
    listen: tuple[str, ...] = ()
    timeout: float = 10.0
    max_connections: int = 1000


@dataclass(frozen=True)
class ControlConfig:
    # The unix socket for administrators' commands; "" switches it off.
    socket: str = ""


@dataclass(frozen=True)
class MetricsConfig:
    listen: tuple[str, ...] = ()


@dataclass(frozen=True)
class LookupConfig:
    deadline: float = 2.0
    max_evaluations: int = 100
    # Cached domains holding no unexpired MTA-STS policy, DANE ones too, at
    # most (least recently used evicted first): what a flood of names costs,
    # junk or under a signed wildcard.
    max_negative: int = 100000
    # Evaluations queued for a slot, at most; beyond, a new domain gets the
    # first-evaluation answer at once.
    max_waiting: int = 1000


@dataclass(frozen=True)
class DNSConfig:
    nameservers: tuple[str, ...] = ()
    port: int = 53
    timeout: float = 2.0
    attempts: int = 2


@dataclass(frozen=True)
class MTASTSConfig:
    trust_root: str | None = None
    fetch_timeout: float = 60.0
    # Refuse policy hosts on loopback, private and link-local addresses, so
    # that a hostile domain cannot make the daemon reach inside the network.
    block_private: bool = True
    txt_ttl_min: int = 60
    txt_ttl_max: int = 3600
    retry_interval: int = 300


@dataclass(frozen=True)
class DANEConfig:
    enabled: bool = True
    ttl_min: int = 60
    ttl_max: int = 3600


@dataclass(frozen=True)
class RefreshConfig:
    enabled: bool = True
    window: float = 7 * 86400.0
    concurrency: int = 20
    startup_spread: float = 60.0


@dataclass(frozen=True)
class StoreConfig:
    backend: str = "sqlite"
    path: str = ""
    flush_interval: float = 1.0
    # The fleet store (backend "redis"): a Twisted client endpoint string.
    redis: str = "tcp:127.0.0.1:6379"
    redis_password: str | None = None
    redis_db: int = 0
    key_prefix: str = "mxpolicyd:"
    # Seconds one daemon of a fleet holds a domain while refreshing it.
    lease: float = 60.0


@dataclass(frozen=True)
class Config:
    state_directory: str
    # daemon.user: the account a daemon started as root switches to once
    # its listeners are bound and its store is open; None: no switch.
    user: str | None = None
    socketmap: SocketmapConfig = field(default_factory=SocketmapConfig)
    exim: EximConfig = field(default_factory=EximConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    control: ControlConfig = field(default_factory=ControlConfig)
    lookup: LookupConfig = field(default_factory=LookupConfig)
    dns: DNSConfig = field(default_factory=DNSConfig)
    mta_sts: MTASTSConfig = field(default_factory=MTASTSConfig)
    dane: DANEConfig = field(default_factory=DANEConfig)
    refresh: RefreshConfig = field(default_factory=RefreshConfig)
    store: StoreConfig = field(default_factory=StoreConfig)
    profiles: Mapping[str, Profile] = field(
        default_factory=lambda: dict(BUILTIN_PROFILES)
    )
    source: str = "(defaults)"
    # [policy] and the [domain."..."] tables: the administrator's policy.
    admin: AdminPolicy = field(default_factory=AdminPolicy)

    @property
    def store_path(self) -> str:
        return self.store.path or os.path.join(
            self.state_directory, "mxpolicyd.sqlite"
        )


def default_state_directory(environ: Mapping[str, str] = os.environ) -> str:
    """
    Where the store lives when the file does not say.

    systemd's StateDirectory= wins; otherwise the XDG state directory, so that
    the daemon runs without root on its defaults.
    """
    if environ.get("STATE_DIRECTORY"):
        return environ["STATE_DIRECTORY"].split(":")[0]
    base = environ.get("XDG_STATE_HOME") or os.path.join(
        environ.get("HOME") or str(Path.home()), ".local", "state"
    )
    return os.path.join(base, "mxpolicyd")


def _check_endpoint(value: str) -> str | None:
    # Parsing the string needs a reactor only to listen; the syntax check
    # of serverFromString's plugins happens at start-up.  Catch the obvious.
    if not value or ":" not in value and not value.isdigit():
        return "entry %r is not a Twisted endpoint string (e.g. %r)" % (
            value,
            DEFAULT_LISTEN[0],
        )
    return None


def _with_unix_mode(description: str) -> str:
    """
    A C{unix:} listener string with C{mode=660} added unless it names a
    mode itself; any other string as it is.
    """
    # Parameters are separated by colons not escaped with a backslash.
    parts = re.split(r"(?<!\\):", description)
    if parts[0] != "unix" or any(p.partition("=")[0] == "mode" for p in parts[1:]):
        return description
    return "%s:mode=%s" % (description, UNIX_LISTEN_MODE)


def unix_path(description: str) -> str | None:
    """The file a C{unix:} listener string binds; None for any other kind."""
    parts = re.split(r"(?<!\\):", description)
    if parts[0] != "unix" or len(parts) < 2:
        return None
    named = [p[len("address="):] for p in parts[1:] if p.startswith("address=")]
    path = named[0] if named else parts[1]
    return None if "=" in path and not named else path.replace("\\:", ":")


def _check_user(value: str) -> str | None:
    if not value:
        return 'must name an account, e.g. "nobody", or be left out'
    try:
        account = pwd.getpwnam(value)
    except KeyError:
        return "names %r, which is no account on this system (getent passwd %s)" % (
            value, value)
    if account.pw_uid == 0:
        return ("names %r, whose uid is 0: give an unprivileged account (e.g. nobody, or "
                "one of mxpolicyd's own), or leave the key out" % (value,))
    return None


def _check_client_endpoint(value: str) -> str | None:
    from twisted.internet.endpoints import clientFromString

    # Building a client endpoint touches no reactor until it connects.
    try:
        clientFromString(object(), value)
    except (ValueError, TypeError, KeyError) as e:
        return (
            "is %r, which is not a Twisted client endpoint string (%s); e.g. "
            '"tcp:127.0.0.1:6379" or "unix:/run/redis/redis-server.sock"' % (value, e)
        )
    return None


def _check_address(value: str) -> str | None:
    import ipaddress

    try:
        ipaddress.ip_address(value)
    except ValueError:
        return "entry %r is not an IP address" % (value,)
    return None


def parse(data: Mapping[str, Any], source: str = "(string)",
          environ: Mapping[str, str] = os.environ) -> Config:
    """Validate a decoded TOML document and build a L{Config}."""
    top = Section(source, "", dict(data))

    daemon = top.table("daemon")
    state_directory = daemon.get(
        "state_directory", default_state_directory(environ), str
    )
    user = daemon.get("user", None, str, _check_user)
    daemon.finish()

    sm = top.table("socketmap")
    listen = tuple(
        map(_with_unix_mode, list_of(sm, "listen", DEFAULT_LISTEN, _check_endpoint)))
    socketmap = SocketmapConfig(
        listen=listen,
        max_request_size=sm.get(
            "max_request_size",
            10000,
            int,
            lambda v: None
            if 64 <= v <= 100000
            else "must be between 64 and 100000 bytes",
        ),
        idle_timeout=sm.positive("idle_timeout", 60.0),
        max_connections=sm.positive("max_connections", 1000),
        request_timeout=sm.get(
            "request_timeout", 10.0, (int, float),
            lambda v: None
            if 0 < v <= 90
            else "must be more than 0 and at most 90 seconds, not %r (Postfix sends "
            "each request whole: a few seconds is plenty)" % (v,),
        ),
    )
    sm.finish()

    ex = top.table("exim")
    exim = EximConfig(
        listen=tuple(map(_with_unix_mode, list_of(ex, "listen", (), _check_endpoint))),
        timeout=ex.positive("timeout", 10.0),
        max_connections=ex.positive("max_connections", 1000),
    )
    ex.finish()

    co = top.table("control")
    control = ControlConfig(
        socket=co.get(
            "socket",
            os.path.join(
                (environ.get("RUNTIME_DIRECTORY") or "").split(":")[0] or state_directory,
                "control.sock",
            ),
            str,
            lambda v: "must be an absolute path, or \"\" to switch it off"
            if v and not v.startswith("/") or ":" in v else None,
        )
    )
    co.finish()

    me = top.table("metrics")
    metrics = MetricsConfig(listen=list_of(me, "listen", (), _check_endpoint))
    me.finish()

    lk = top.table("lookup")
    lookup = LookupConfig(
        deadline=lk.get(
            "deadline",
            2.0,
            (int, float),
            lambda v: None
            if 0 <= v <= 90
            else "must be between 0 and 90 seconds (Postfix waits 100 s)",
        ),
        max_evaluations=lk.positive("max_evaluations", 100),
        max_negative=lk.positive("max_negative", 100000),
        max_waiting=lk.get(
            "max_waiting", 1000, int,
            lambda v: None if v >= 0 else "must be 0 or more, not %r" % (v,),
        ),
    )
    lk.finish()

    dn = top.table("dns")
    dns = DNSConfig(
        nameservers=list_of(dn, "nameservers", (), _check_address),
        port=dn.get(
            "port", 53, int,
            lambda v: None if 0 < v < 65536 else "must be a port number",
        ),
        timeout=dn.positive("timeout", 2.0),
        attempts=dn.positive("attempts", 2),
    )
    dn.finish()

    ms = top.table("mta_sts")
    trust_root = ms.get("trust_root", "system", str)
    if trust_root != "system" and not os.path.isfile(trust_root):
        ms.fail(
            "mta_sts.trust_root",
            "names %r, which is not a readable file; give a PEM CA file "
            'or "system"' % (trust_root,),
        )
    txt_ttl_min = ms.positive("txt_ttl_min", 60)
    txt_ttl_max = ms.positive("txt_ttl_max", 3600)
    if txt_ttl_max < txt_ttl_min:
        ms.fail("mta_sts.txt_ttl_max", "must not be below mta_sts.txt_ttl_min")
    mta_sts = MTASTSConfig(
        trust_root=None if trust_root == "system" else trust_root,
        fetch_timeout=ms.positive("fetch_timeout", 60.0),
        block_private=ms.get("block_private", True, bool),
        txt_ttl_min=txt_ttl_min,
        txt_ttl_max=txt_ttl_max,
        retry_interval=ms.get(
            "retry_interval", 300, int,
            # RFC 8461 s3.3: no sooner than five minutes after a failure.
            lambda v: None if v >= 300 else "must be at least 300 (RFC 8461)",
        ),
    )
    ms.finish()

    da = top.table("dane")
    dane_ttl_min = da.positive("ttl_min", 60)
    dane_ttl_max = da.positive("ttl_max", 3600)
    if dane_ttl_max < dane_ttl_min:
        da.fail("dane.ttl_max", "must not be below dane.ttl_min")
    dane = DANEConfig(
        enabled=da.get("enabled", True, bool),
        ttl_min=dane_ttl_min,
        ttl_max=dane_ttl_max,
    )
    da.finish()

    rf = top.table("refresh")
    refresh = RefreshConfig(
        enabled=rf.get("enabled", True, bool),
        window=rf.positive("window", 7 * 86400.0),
        concurrency=rf.positive("concurrency", 20),
        startup_spread=rf.positive("startup_spread", 60.0),
    )
    rf.finish()

    st = top.table("store")
    store = StoreConfig(
        backend=st.get(
            "backend", "sqlite", str,
            lambda v: None if v in ("sqlite", "redis")
            else 'must be "sqlite" or "redis", not %r' % (v,),
        ),
        path=st.get("path", "", str),
        flush_interval=st.positive("flush_interval", 1.0),
        redis=st.get("redis", "tcp:127.0.0.1:6379", str, _check_client_endpoint),
        redis_password=st.get("redis_password", None, str),
        redis_db=st.get(
            "redis_db", 0, int,
            lambda v: None if v >= 0 else "must be 0 or more, not %r" % (v,),
        ),
        key_prefix=st.get(
            "key_prefix", "mxpolicyd:", str,
            lambda v: None if v.isprintable() and " " not in v
            else "must be printable, without spaces, not %r" % (v,),
        ),
        lease=st.positive("lease", 60.0),
    )
    st.finish()

    profiles = dict(BUILTIN_PROFILES)
    pr = top.table("profiles")
    for name in list(pr._table):
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            pr.fail("profiles." + name, "is not a valid map name "
                    "(letters, digits, '-', '_', '.')")
        base = profiles.get(name, Profile(name))
        one = pr.table(name)
        profiles[name] = Profile(
            name,
            servername=one.get("servername", base.servername, bool),
            strict_testing=one.get("strict_testing", base.strict_testing, bool),
            tlsrpt=one.get("tlsrpt", base.tlsrpt, bool),
        )
        one.finish()
    pr.finish()
    admin = parse_admin(top)
    top.finish()

    return Config(
        state_directory=state_directory,
        user=user,
        socketmap=socketmap,
        exim=exim,
        metrics=metrics,
        control=control,
        lookup=lookup,
        dns=dns,
        mta_sts=mta_sts,
        dane=dane,
        refresh=refresh,
        store=store,
        profiles=profiles,
        source=source,
        admin=admin,
    )


def load(path: str | None, environ: Mapping[str, str] = os.environ) -> Config:
    """
    Read and validate the file at C{path}, then the C{conf.d/*.toml}
    fragments beside it, in name order, each merged over the ones before
    (tables key by key; other values replace), so that a package's file and
    an administrator's changes stay apart.

    With no path, the default file is used if it exists and the embedded
    defaults otherwise, so that a bare C{mxpolicyd} runs.
    """
    if path is None:
        if not os.path.exists(DEFAULT_PATH):
            return parse({}, "(defaults)", environ)
        path = DEFAULT_PATH
    data = _read(path)
    config = parse(data, path, environ)
    # conf.d/*.toml beside the file, in name order, each merged over what
    # came before.  Validating after each one blames the file that broke it.
    directory = os.path.join(os.path.dirname(path), "conf.d")
    fragments = sorted(Path(directory).glob("*.toml")) if os.path.isdir(directory) else []
    for fragment in fragments:
        data = _merged_config(data, _read(str(fragment)))
        config = parse(data, str(fragment), environ)
    if fragments:
        names = ", ".join(os.path.join("conf.d", f.name) for f in fragments)
        config = replace(config, source="%s + %s" % (path, names))
    return config


def _read(path: str) -> dict[str, Any]:
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise ConfigError("%s: cannot read: %s" % (path, e.strerror)) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError("%s: not valid TOML: %s" % (path, e)) from None


def _merged_config(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """
    L{_merged}, except that a C{[domain."..."]} entry is replaced as a
    whole: a fragment's entry for a domain is the administrator's whole
    decision for it, never half of one mixed with an earlier file's.
    """
    out = _merged({k: v for k, v in base.items() if k != "domain"},
                  {k: v for k, v in over.items() if k != "domain"})
    domains = base.get("domain"), over.get("domain")
    if isinstance(domains[0], dict) and isinstance(domains[1], dict):
        out["domain"] = {**domains[0], **domains[1]}
    elif "domain" in over or "domain" in base:
        out["domain"] = over["domain"] if "domain" in over else base["domain"]
    return out


def _merged(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    """Tables merge key by key; any other value, a list too, replaces."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merged(out[key], value)
        else:
            out[key] = value
    return out
