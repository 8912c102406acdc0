"""
Migration from postfix-mta-sts-resolver: its YAML configuration
(C{mta-sts-daemon.yml}) in, the equivalent mxpolicyd TOML out.

Only C{mxpolicyd import-config} uses this module.  L{convert} is pure (a
decoded YAML document to TOML text and warnings), so every documented key is
covered by table tests; L{read_yaml} alone needs PyYAML, imported when called
so that the daemon never depends on it.  Settings without an equivalent are
kept in the output as C{#} comments saying why, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

DEFAULT_SOURCES = ("/etc/mta-sts-daemon.yml", "/etc/postfix/mta-sts-daemon.yml")

# postfix-mta-sts-resolver's documented keys (mta-sts-daemon.yml(5)).
_TOP_KEYS = {
    "host", "port", "path", "mode", "reuse_port", "shutdown_timeout", "cache_grace",
    "cache", "default_zone", "zones", "proactive_policy_fetching",
}
_ZONE_KEYS = {"strict_testing", "timeout", "require_sni", "tlsrpt"}
_PROACTIVE_KEYS = {"enabled", "interval", "concurrency_limit", "grace_ratio"}
_CACHE_TYPES = {"internal", "sqlite", "redis", "redis_sentinel", "postgres"}


class MigrateError(Exception):
    """The file cannot be converted; the message names the file and the key."""


@dataclass
class Conversion:
    """The TOML text, and the warnings an administrator should read."""

    toml: str
    warnings: list[str] = field(default_factory=list)


def read_yaml(path: str) -> Any:
    """
    Decode C{path} with PyYAML's safe loader, as postfix-mta-sts-resolver
    does.  PyYAML is optional for mxpolicyd (the C{import} extra, Debian's
    python3-yaml), hence the late import.
    """
    try:
        import yaml
    except ImportError:
        raise MigrateError(
            "reading %s needs PyYAML: apt-get install python3-yaml "
            "(or pip install 'mxpolicyd[import]')" % (path,)
        ) from None
    try:
        with open(path, "rb") as f:
            return yaml.safe_load(f)
    except OSError as e:
        raise MigrateError("%s: cannot read: %s" % (path, e.strerror)) from None
    except yaml.YAMLError as e:
        raise MigrateError("%s: not valid YAML: %s" % (path, e)) from None


def _quote(value: str) -> str:
    # A JSON string is a valid TOML basic string for the characters met here.
    return json.dumps(value, ensure_ascii=False)


def _number(value: float) -> str:
    return repr(float(value))


class _Reader:
    """Typed access to the YAML document, failing with file and key named."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.warnings: list[str] = []

    def fail(self, key: str, problem: str) -> MigrateError:
        return MigrateError("%s: %s %s" % (self.source, key, problem))

    def table(self, data: Any, key: str) -> dict[str, Any]:
        if data is None:
            return {}
        if not isinstance(data, dict):
            raise self.fail(key, "must be a mapping, not %r" % (data,))
        return data

    def boolean(self, data: dict[str, Any], name: str, key: str) -> bool | None:
        if name not in data:
            return None
        value = data[name]
        if not isinstance(value, bool):
            raise self.fail(key, "must be true or false, not %r" % (value,))
        return value

    def number(self, data: dict[str, Any], name: str, key: str,
               positive: bool = True) -> float | None:
        if name not in data:
            return None
        value = data[name]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise self.fail(key, "must be a number, not %r" % (value,))
        if positive and value <= 0:
            raise self.fail(key, "must be greater than 0, not %r" % (value,))
        return value

    def string(self, data: dict[str, Any], name: str, key: str) -> str | None:
        if name not in data:
            return None
        value = data[name]
        if not isinstance(value, str) or not value:
            raise self.fail(key, "must be a non-empty string, not %r" % (value,))
        return value

    def unknown(self, data: dict[str, Any], known: set[str], prefix: str) -> list[str]:
        found = sorted(str(k) for k in data if k not in known)
        for name in found:
            self.warnings.append(
                "%s: %s%s is not a postfix-mta-sts-resolver setting; ignored"
                % (self.source, prefix, name)
            )
        return [prefix + name for name in found]


def _listen(r: _Reader, top: dict[str, Any], notes: list[str]) -> str | None:
    path = r.string(top, "path", "path")
    if path is not None:
        if "host" in top or "port" in top:
            notes.append("host and port: ignored, as by postfix-mta-sts-resolver, "
                         "because path is set")
        mode = top.get("mode")
        if mode is not None and (isinstance(mode, bool) or not isinstance(mode, int)):
            raise r.fail("mode", "must be a number (e.g. 0666), not %r" % (mode,))
        endpoint = "unix:" + path.replace(":", "\\:")
        if mode is not None:
            endpoint += ":mode=%o" % (mode,)
        return endpoint
    if "mode" in top:
        notes.append("mode: applies only to a unix socket (path), so not converted")
    if "host" not in top and "port" not in top:
        return None
    host = r.string(top, "host", "host") or "127.0.0.1"
    port = top.get("port", 8461)
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise r.fail("port", "must be a port number, not %r" % (port,))
    if host in ("localhost",):
        host = "127.0.0.1"
    if ":" in host:
        return "tcp6:%d:interface=%s" % (port, host.replace(":", "\\:"))
    return "tcp:%d:interface=%s" % (port, host)


def redis_endpoint(url: str) -> tuple[str, str | None, int]:
    """
    A redis-py URL as a Twisted client endpoint, the password and the
    database number.  TLS (C{rediss://}) has no equivalent in mxpolicyd's
    Redis client, so it is refused rather than silently downgraded.
    """
    parts = urlsplit(url)
    query = parse_qs(parts.query)
    db = 0
    if query.get("db"):
        db = int(query["db"][0])
    password = unquote(parts.password) if parts.password else None
    if query.get("password"):
        password = query["password"][0]
    if parts.scheme == "redis":
        host = parts.hostname or "127.0.0.1"
        port = parts.port or 6379
        if parts.path.strip("/"):
            db = int(parts.path.strip("/"))
        if ":" in host:
            host = host.replace(":", "\\:")
        return "tcp:%s:%d" % (host, port), password, db
    if parts.scheme == "unix":
        return "unix:%s" % (parts.path.replace(":", "\\:"),), password, db
    raise ValueError("scheme %r is not supported (redis:// or unix:// only)" % (parts.scheme,))


def convert(data: Any, source: str) -> Conversion:
    """
    The mxpolicyd TOML equivalent to a decoded C{mta-sts-daemon.yml}.

    Values the old file does not set are left to mxpolicyd's own defaults,
    which follow RFC 8461 (e.g. a 60 s policy fetch where the old daemon
    allowed 4 s).  Unknown keys are warnings, not errors: the old daemon
    ignored them too.
    """
    r = _Reader(source)
    top = r.table(data, "the top level")
    unsupported: list[str] = []
    notes: list[str] = []
    sections: dict[str, dict[str, str]] = {}

    def put(section: str, key: str, value: str) -> None:
        # A later setting wins (url's password, then an explicit password).
        sections.setdefault(section, {})[key] = value

    unknown = r.unknown(top, _TOP_KEYS, "")

    listen = _listen(r, top, notes)
    if listen is not None:
        put("socketmap", "listen", "[%s]" % (_quote(listen),))

    if r.boolean(top, "reuse_port", "reuse_port") is not None:
        unsupported.append("reuse_port: mxpolicyd runs one process per port; "
                           "several daemons share their work through [store] backend "
                           "\"redis\" instead")
    if r.number(top, "shutdown_timeout", "shutdown_timeout") is not None:
        unsupported.append("shutdown_timeout: mxpolicyd closes connections at once "
                           "on shutdown; Postfix reconnects and retries")
    if r.number(top, "cache_grace", "cache_grace") is not None:
        unsupported.append("cache_grace: mxpolicyd re-checks the _mta-sts TXT record "
                           "after its TTL, clamped to mta_sts.txt_ttl_min..txt_ttl_max")

    cache = r.table(top.get("cache"), "cache")
    unknown += r.unknown(cache, {"type", "options"}, "cache.")
    kind = cache.get("type", "internal")
    if kind not in _CACHE_TYPES:
        raise r.fail("cache.type", "must be one of %s, not %r"
                     % (", ".join(sorted(_CACHE_TYPES)), kind))
    options = r.table(cache.get("options"), "cache.options")
    if kind == "internal":
        unknown += r.unknown(options, {"cache_size"}, "cache.options.")
        if "cache_size" in options:
            unsupported.append("cache.options.cache_size: mxpolicyd keeps every "
                               "domain looked up within refresh.window, in memory "
                               "and in its SQLite store (about 1 KB each)")
    elif kind == "sqlite":
        put("store", "backend", "\"sqlite\"")
        unknown += r.unknown(options, {"filename", "threads", "timeout"}, "cache.options.")
        for name in sorted(options):
            if name in ("filename", "threads", "timeout"):
                unsupported.append(
                    "cache.options.%s: the old cache file has another format; "
                    "mxpolicyd keeps its own store at store.path "
                    "(default <state_directory>/mxpolicyd.sqlite)" % (name,))
    elif kind == "redis":
        put("store", "backend", "\"redis\"")
        url = r.string(options, "url", "cache.options.url")
        if url is not None:
            try:
                endpoint, password, db = redis_endpoint(url)
            except ValueError as e:
                raise r.fail("cache.options.url", "cannot be converted: %s" % (e,))
            put("store", "redis", "%s" % (_quote(endpoint),))
            if password is not None:
                put("store", "redis_password", "%s" % (_quote(password),))
            if db:
                put("store", "redis_db", "%d" % (db,))
        if "password" in options:
            password = r.string(options, "password", "cache.options.password")
            put("store", "redis_password", "%s" % (_quote(password or ""),))
        if "db" in options:
            db_value = options["db"]
            if isinstance(db_value, bool) or not isinstance(db_value, int) or db_value < 0:
                raise r.fail("cache.options.db", "must be 0 or more, not %r" % (db_value,))
            put("store", "redis_db", "%d" % (db_value,))
        for name in sorted(set(options) - {"url", "password", "db"}):
            unsupported.append("cache.options.%s: a redis-py connection option "
                               "mxpolicyd's Redis client does not have" % (name,))
    else:
        unsupported.append(
            "cache.type %s: mxpolicyd stores in SQLite or Redis only; "
            "the embedded SQLite store is used" % (kind,))
        r.warnings.append("%s: cache.type %s has no mxpolicyd equivalent; using the "
                          "SQLite store" % (source, kind))

    proactive = r.table(top.get("proactive_policy_fetching"), "proactive_policy_fetching")
    unknown += r.unknown(proactive, _PROACTIVE_KEYS, "proactive_policy_fetching.")
    enabled = r.boolean(proactive, "enabled", "proactive_policy_fetching.enabled")
    if enabled is not None:
        put("refresh", "enabled", "%s" % ("true" if enabled else "false"))
    limit = r.number(proactive, "concurrency_limit", "proactive_policy_fetching.concurrency_limit")
    if limit is not None:
        put("refresh", "concurrency", "%d" % (int(limit),))
    if r.number(proactive, "interval", "proactive_policy_fetching.interval") is not None:
        unsupported.append("proactive_policy_fetching.interval: mxpolicyd refreshes each "
                           "domain when its evidence is due (TXT TTL, half max_age, "
                           "at most a day)")
    if r.number(proactive, "grace_ratio", "proactive_policy_fetching.grace_ratio") is not None:
        unsupported.append("proactive_policy_fetching.grace_ratio: see interval")

    default_zone = r.table(top.get("default_zone"), "default_zone")
    zones = r.table(top.get("zones"), "zones")
    profiles: dict[str, dict[str, bool]] = {}
    timeouts: dict[str, float] = {}

    def zone(name: str, table: Any, key: str) -> None:
        nonlocal unknown
        z = r.table(table, key)
        unknown += r.unknown(z, _ZONE_KEYS, key + ".")
        settings: dict[str, bool] = {}
        for old, new in (("strict_testing", "strict_testing"),
                         ("require_sni", "servername"), ("tlsrpt", "tlsrpt")):
            value = r.boolean(z, old, "%s.%s" % (key, old))
            if value is not None:
                settings[new] = value
        timeout = r.number(z, "timeout", key + ".timeout")
        if timeout is not None:
            timeouts[key] = timeout
        if not name or not all(c.isalnum() or c in "-_." for c in name):
            r.warnings.append("%s: %s: %r is not a valid mxpolicyd map name "
                              "(letters, digits, '-', '_', '.'); skipped" % (source, key, name))
            unsupported.append("%s: not a valid map name" % (key,))
            return
        if settings or name not in profiles:
            profiles.setdefault(name, {}).update(settings)

    # The old daemon answers every map name without a zone of its own from
    # default_zone; the map name its documentation gives Postfix is "postfix".
    zone("postfix", default_zone, "default_zone")
    for name in zones:
        zone(str(name), zones[name], "zones.%s" % (name,))
    if timeouts:
        fetch = timeouts.get("default_zone", max(timeouts.values()))
        put("mta_sts", "fetch_timeout", "%s" % (_number(fetch),))
        others = sorted(k for k, v in timeouts.items() if v != fetch)
        if others:
            unsupported.append(
                "%s: mxpolicyd has one mta_sts.fetch_timeout for all maps" % (
                    ", ".join(k + ".timeout" for k in others),))

    lines = [
        "# mxpolicyd configuration converted from %s" % (source,),
        "# by mxpolicyd import-config.  Check it with: mxpolicyd check-config --config FILE",
        "# A map name other than those under [profiles] gets PERM from mxpolicyd,",
        "# where postfix-mta-sts-resolver answered it from default_zone.",
    ]
    for section in ("socketmap", "mta_sts", "refresh", "store"):
        if section in sections:
            lines += ["", "[%s]" % (section,)]
            lines += ["%s = %s" % item for item in sections[section].items()]
    for name, settings in profiles.items():
        lines += ["", "[profiles.%s]" % (name,)]
        for key in ("servername", "strict_testing", "tlsrpt"):
            if key in settings:
                lines.append("%s = %s" % (key, "true" if settings[key] else "false"))
        if settings.get("tlsrpt"):
            lines.append("# tlsrpt needs Postfix >= 3.10: older versions defer mail "
                         "given TLSRPT attributes")
    if notes or unsupported or unknown:
        lines += ["", "# Not converted:"]
        lines += ["#   %s" % (n,) for n in notes + unsupported]
        lines += ["#   %s: unknown setting, ignored" % (k,) for k in unknown]
    return Conversion("\n".join(lines) + "\n", r.warnings)
