"""
Assembly: from a validated L{Config} to the running service tree.

This is the only place that knows every part: it builds the DNS client, the
policy fetcher, the evaluators, the store, the cache and the responders, and
puts one endpoint service per listener and the store's timer into one
MultiService.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import pwd
import resource
import time
from dataclasses import dataclass
from typing import Any, Callable

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from twisted.web.server import Site

from mxpolicyd.answers.control import ControlCommands
from mxpolicyd.answers.exim import EximResponder
from mxpolicyd.answers.postfix import PostfixResponder
from mxpolicyd.cache.policycache import CacheSettings, PolicyCache
from mxpolicyd.cache.refresher import Refresher
from mxpolicyd.config.expiry import ExpiryWatch
from mxpolicyd.config.load import Config, ConfigError, load, unix_path
from mxpolicyd.evidence.dane_lookups import DaneEvaluator
from mxpolicyd.evidence.evaluator import Evaluator
from mxpolicyd.evidence.sts_discovery import StsEvaluator
from mxpolicyd.net.dns import Resolver, system_nameservers
from mxpolicyd.net.https import PolicyFetcher
from mxpolicyd.net.redis import RedisClient
from mxpolicyd.ops.metrics import Metrics, MetricsResource
from mxpolicyd.policy.merge import written
from mxpolicyd.policy.verdict import Verdict, first_answer
from mxpolicyd.protocols.control import ControlFactory
from mxpolicyd.protocols.exim import EximFactory
from mxpolicyd.protocols.socketmap import SocketmapFactory
from mxpolicyd.store.base import DurableStore
from mxpolicyd.store.redis import RedisStore
from mxpolicyd.store.service import StoreService
from mxpolicyd.store.sqlite import SQLiteStore

_log = Logger()


def build_evaluator(config: Config, reactor: Any) -> Evaluator:
    """The evaluation chain alone: what C{explain} and the daemon share."""
    nameservers = list(config.dns.nameservers) or system_nameservers()
    if not nameservers:
        _log.warn("No nameservers configured and none in /etc/resolv.conf; using 127.0.0.1")
        nameservers = ["127.0.0.1"]
    resolver = Resolver(
        reactor,
        nameservers,
        port=config.dns.port,
        timeout=config.dns.timeout,
        attempts=config.dns.attempts,
    )
    try:
        fetcher = PolicyFetcher(
            reactor,
            resolver,
            trust_root=config.mta_sts.trust_root,
            timeout=config.mta_sts.fetch_timeout,
            block_private=config.mta_sts.block_private,
        )
    except (OSError, ValueError) as e:
        raise ConfigError(
            "%s: mta_sts.trust_root cannot be used: %s" % (config.source, e)
        ) from None
    sts = StsEvaluator(
        reactor,
        resolver,
        fetcher,
        ttl_min=config.mta_sts.txt_ttl_min,
        ttl_max=config.mta_sts.txt_ttl_max,
        retry_interval=config.mta_sts.retry_interval,
    )
    dane = None
    if config.dane.enabled:
        dane = DaneEvaluator(
            reactor, resolver, ttl_min=config.dane.ttl_min, ttl_max=config.dane.ttl_max
        )
        remote = [ns for ns in nameservers if not ipaddress.ip_address(ns).is_loopback]
        if remote:
            _log.warn(
                "DANE trusts the AD bit of resolver {remote}, which is not on "
                "loopback: an attacker on the path could forge it.  Run a local "
                "validating resolver (unbound) and list it in dns.nameservers, "
                "or set dane.enabled = false",
                remote=", ".join(remote),
            )
    return Evaluator(sts, dane)


def first_answers(evaluator: Evaluator) -> Callable[[str], Verdict]:
    """What a lookup answers while a domain's first evaluation runs."""
    return lambda domain: first_answer(domain, evaluator.partial_dane(domain),
                                       evaluator.dane_enabled)


@dataclass
class Daemon:
    service: MultiService
    cache: PolicyCache
    store: DurableStore
    responder: PostfixResponder
    refresher: Refresher | None
    metrics: Metrics
    config: Config
    reactor: Any
    # Warns about administrator entries that end (issue #8).
    expiry: ExpiryWatch | None = None

    def reload(self, path: str | None) -> bool:
        """
        Re-read the configuration and apply what can change while running.

        Validation comes first and the swap is all or nothing: a bad file
        leaves the running configuration untouched and says which key is
        wrong.  Listeners and the store need a restart; a change to them is
        logged, not applied.
        """
        try:
            config = load(path)
            evaluator = build_evaluator(config, self.reactor)
        except ConfigError as e:
            self.metrics.reloads.inc("failed")
            _log.error("Reload refused, keeping the running configuration: {error}",
                       error=str(e))
            return False
        old = self.config
        for what, before, after in (
            ("socketmap.listen", old.socketmap.listen, config.socketmap.listen),
            ("exim.listen", old.exim.listen, config.exim.listen),
            ("metrics.listen", old.metrics.listen, config.metrics.listen),
            ("store", old.store, config.store),
            ("daemon.state_directory", old.state_directory, config.state_directory),
            ("daemon.user", old.user, config.user),
        ):
            if before != after:
                _log.warn("Reload: {what} changed; restart mxpolicyd to apply it",
                          what=what)
        self.cache.set_evaluator(evaluator, first_answers(evaluator), config.lookup.deadline)
        self.cache.set_bounds(config.lookup.max_negative, config.lookup.max_waiting)
        self.responder.set_profiles(config.profiles)
        # After set_profiles dropped the memo: entries re-decide lazily.
        self.cache.set_admin(config.admin)
        if self.expiry is not None:
            self.expiry.set_policy(config.admin)
        if self.refresher is not None:
            self.refresher.window = config.refresh.window
            self.refresher.concurrency = config.refresh.concurrency
        self.config = config
        self.metrics.reloads.inc("applied")
        _log.info("Reloaded the configuration from {source}", source=config.source)
        return True


class WarmUp(Service):
    """Reads the store into memory in the background once serving starts."""

    def __init__(self, cache: PolicyCache, path: str) -> None:
        self._cache = cache
        self._path = path

    def startService(self) -> None:
        super().startService()
        started = time.monotonic()

        def done(count: int) -> None:
            # The loaded states live as long as the daemon: keep the cyclic
            # garbage collector from walking a million of them on every full
            # collection, which would stall lookups and refreshes.
            gc.freeze()
            _log.info(
                "Loaded {count} domains from {path} in {seconds:.1f} s",
                count=count,
                path=self._path,
                seconds=time.monotonic() - started,
            )

        self._cache.warm().addCallback(done).addErrback(
            lambda f: _log.failure("Loading the store {path} failed", f, path=self._path)
        )


def horizon(config: Config) -> float:
    """
    The longest this daemon waits between checks of a domain's evidence:
    the TXT and DANE TTL caps and the back-off after a failed fetch.  A
    fleet peer's state never schedules a check later than this.
    """
    return float(max(config.mta_sts.txt_ttl_max, config.mta_sts.retry_interval,
                     config.dane.ttl_max))


def _endpoint_host(description: str) -> tuple[str, str | None]:
    """
    The kind of a client endpoint string and the host it connects to (None
    for a unix socket), colons escaped with backslashes as Twisted has them.
    """
    fields, field, escaped = [], "", False
    for c in description:
        if escaped:
            field, escaped = field + c, False
        elif c == "\\":
            escaped = True
        elif c == ":":
            fields.append(field)
            field = ""
        else:
            field += c
    fields.append(field)
    kind, args = fields[0], fields[1:]
    if kind == "unix":
        return kind, None
    named = dict(a.split("=", 1) for a in args if "=" in a)
    positional = [a for a in args if "=" not in a]
    return kind, named.get("host", positional[0] if positional else "")


def redis_exposure(config: Config) -> list[str]:
    """
    What is risky about the fleet store's Redis, from the config alone
    (store.redis and store.redis_password; nothing is asked of Redis): no
    password, and a TCP host that is not loopback (an IP address outside
    127.0.0.0/8 and ::1, or any name but localhost).  Whoever can write
    to it can write what every daemon of the fleet reads: the daemons
    merge it and never take a weaker state from it, but stronger lies
    defer mail, and leases held stop the fleet's refreshes.
    """
    store = config.store
    warnings = []
    kind, host = _endpoint_host(store.redis)
    if host is not None:
        try:
            loopback = ipaddress.ip_address(host.strip("[]")).is_loopback
        except ValueError:
            loopback = host.lower() in ("localhost", "localhost.")
        if not loopback:
            warnings.append(
                "store.redis (%s) is not on loopback: every host that reaches %s can "
                "try to write the domain states the fleet shares%s; keep Redis on a "
                "network only the fleet reaches, with a password"
                % (store.redis, host, "" if kind == "tls" else
                   ", and they and the password cross the network in clear text"))
    if store.redis_password is None:
        warnings.append(
            "store.redis_password is not set: anyone who can connect to Redis at %s "
            "can write the domain states the fleet shares (the daemons never take a "
            "weaker state from it, but a stronger one defers mail, and a held lease "
            "stops refreshes); set requirepass in redis.conf and store.redis_password"
            % (store.redis,))
    return warnings


def make_store(config: Config, reactor: Any) -> tuple[DurableStore, Callable[[], None]]:
    """
    The durable store the config asks for, opened, and what stops its
    machinery after the last flush.
    """
    if config.store.backend == "redis":
        for warning in redis_exposure(config):
            _log.warn("{warning}", warning=warning)
        client = RedisClient(
            reactor,
            config.store.redis,
            password=config.store.redis_password,
            db=config.store.redis_db,
        )
        admin = config.admin
        limit = horizon(config)
        redis = RedisStore(
            client, reactor, window=config.refresh.window, prefix=config.store.key_prefix,
            memory=admin.memory if admin.downgrade != "off" else 0.0,
            merge=lambda ours, stored, now, acknowledged: written(
                ours, stored, now, limit, acknowledged),
        )
        redis.open()
        return redis, lambda: None
    pool = ThreadPool(minthreads=1, maxthreads=1, name="mxpolicyd-store")

    def run(f: Any, *args: Any) -> Any:
        return deferToThreadPool(reactor, pool, f, *args)

    sqlite = SQLiteStore(config.store_path, run)
    sqlite.open()
    pool.start()
    return sqlite, pool.stop


def raise_open_files_limit(config: Config) -> None:
    """
    Raise the soft limit on open files to the hard one, as systemd advises:
    it starts services with 1024, fewer than socketmap.max_connections and
    exim.max_connections allow together, and a listener out of descriptors
    stops accepting.  Say so when even the hard limit falls short.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Linux refuses more than fs.nr_open, 1048576 by default.
    target = hard if hard != resource.RLIM_INFINITY else max(soft, 1048576)
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as e:
            _log.warn("Cannot raise the limit on open files from {soft} to {target}: "
                      "{error}", soft=soft, target=target, error=e)
        else:
            _log.info("Raised the limit on open files from {soft} to {target}",
                      soft=soft, target=target)
            soft = target
    # Beyond the connections: DNS sockets and policy fetches of the
    # evaluations in flight, the store, metrics and control listeners.
    needed = (config.socketmap.max_connections
              + (config.exim.max_connections if config.exim.listen else 0)
              + 4 * config.lookup.max_evaluations + 64)
    if soft != resource.RLIM_INFINITY and soft < needed:
        _log.warn(
            "The limit on open files ({limit}) is below the {needed} that "
            "socketmap.max_connections, exim.max_connections and "
            "lookup.max_evaluations may use; raise LimitNOFILE= (systemd) or "
            "lower those settings",
            limit=soft, needed=needed)


# The widest umask the daemon runs with: new files at most 0640, new
# directories at most 0750, and a unix socket never open to all between
# bind() and Twisted's chmod() to the listener's mode.
UMASK = 0o027


def restrict_umask() -> int:
    """
    Narrow the process umask to at least L{UMASK} (a stricter one is kept);
    returns the one before.
    """
    before = os.umask(UMASK)
    os.umask(before | UMASK)
    return before


def state_files(config: Config) -> list[str]:
    """
    The files and directories the daemon creates and keeps writing: the
    state directory, the SQLite store and its -wal and -shm files, and the
    unix sockets it listens on (with the control socket's lock).
    """
    paths = [config.state_directory]
    if config.store.backend == "sqlite":
        paths += [config.store_path + suffix for suffix in ("", "-wal", "-shm")]
    for description in config.socketmap.listen + config.exim.listen + config.metrics.listen:
        path = unix_path(description)
        if path is not None:
            paths.append(path)
    if config.control.socket:
        paths += [config.control.socket, config.control.socket + ".lock"]
    return paths


def leave_root(config: Config, system: Any = os) -> None:
    """
    Once the listeners are bound and the store is open: started as root,
    switch to daemon.user and its primary group, handing it the state
    files (L{state_files}) that root made, so that it can go on writing
    them and remove its sockets at stop; without daemon.user, warn that the
    daemon runs as root.  Any other account stays as it is.

    @param system: L{os}, or a test's fake of the calls used here.
    @raise OSError: the switch failed; the daemon must not go on as root.
    """
    uid = system.geteuid()
    user = config.user
    if uid != 0:
        if user is not None and pwd.getpwnam(user).pw_uid != uid:
            _log.warn(
                "daemon.user is {user}, but mxpolicyd was started as uid {uid}, not as "
                "root, so it cannot switch: it runs as uid {uid}", user=user, uid=uid)
        return
    if user is None:
        _log.warn(
            "mxpolicyd runs as root, which it does not need: set daemon.user in {source} "
            "(e.g. \"nobody\", or an account of its own) to switch to that account once "
            "the listeners are bound, or start it as an unprivileged user (the Debian "
            "unit runs it as _mxpolicyd)", source=config.source)
        return
    account = pwd.getpwnam(user)
    new_uid, new_gid = account.pw_uid, account.pw_gid
    paths = state_files(config)
    for path in paths:
        # Only what root owns: a file an administrator gave another
        # account stays theirs.  lchown: the control socket's lock is a
        # symlink to the daemon's pid.
        try:
            if system.lstat(path).st_uid == 0:
                system.lchown(path, new_uid, new_gid)
        except FileNotFoundError:
            continue
    system.setgroups([new_gid])
    system.setgid(new_gid)
    system.setuid(new_uid)
    if system.getuid() != new_uid or system.geteuid() != new_uid:
        raise OSError("still uid %d after switching to %s" % (system.geteuid(), user))
    _log.info("Switched to user {user} (uid {uid}, gid {gid}) now that the listeners are "
              "bound and the store is open", user=user, uid=new_uid, gid=new_gid)
    for directory in sorted({os.path.dirname(p) for p in paths[1:]} - {""}):
        if system.path.isdir(directory) and not system.access(directory, os.W_OK | os.X_OK):
            _log.warn(
                "{user} cannot write the directory {directory}: mxpolicyd cannot remove "
                "its sockets or journal files there when it stops; make the directory "
                "{user}'s, or keep mxpolicyd's files under daemon.state_directory",
                user=user, directory=directory)


def make_daemon(config: Config, reactor: Any) -> Daemon:
    raise_open_files_limit(config)
    evaluator = build_evaluator(config, reactor)
    store, stop_store = make_store(config, reactor)
    metrics = Metrics()
    cache = PolicyCache(
        reactor,
        evaluator,
        store,
        CacheSettings(
            deadline=config.lookup.deadline,
            max_evaluations=config.lookup.max_evaluations,
            max_waiting=config.lookup.max_waiting,
            max_negative=config.lookup.max_negative,
            lease=config.store.lease,
            horizon=horizon(config),
        ),
        first_answer=first_answers(evaluator),
        metrics=metrics,
    )
    responder = PostfixResponder(reactor, cache, config.profiles, metrics=metrics)
    cache.set_admin(config.admin)

    top = MultiService()
    expiry = ExpiryWatch(reactor, config.admin)
    expiry.setServiceParent(top)
    StoreService(
        store, reactor, config.store.flush_interval, stop=stop_store
    ).setServiceParent(top)
    refresher = None
    if config.refresh.enabled:
        refresher = Refresher(
            reactor,
            cache,
            window=config.refresh.window,
            concurrency=config.refresh.concurrency,
            startup_spread=config.refresh.startup_spread,
        )
        refresher.setServiceParent(top)
    WarmUp(cache, store.path).setServiceParent(top)
    factory = SocketmapFactory(
        responder.lookup,
        reactor,
        max_request_size=config.socketmap.max_request_size,
        idle_timeout=config.socketmap.idle_timeout,
        max_connections=config.socketmap.max_connections,
        request_timeout=config.socketmap.request_timeout,
    )
    exim = EximFactory(
        EximResponder(cache, metrics).lookup,
        reactor,
        timeout=config.exim.timeout,
        max_connections=config.exim.max_connections,
    )
    site = Site(MetricsResource(metrics))
    site.noisy = False
    # A scrape every 15 s is not worth a log line.
    site.log = lambda request: None  # type: ignore[method-assign]
    metrics.gauge("mxpolicyd_cached_domains", "Domains in memory.", lambda: len(cache))
    metrics.gauge("mxpolicyd_evaluations_in_flight", "Evaluations running now.",
                  lambda: cache.evaluations_in_flight)
    metrics.gauge("mxpolicyd_store_pending_writes", "Domain states not yet written.",
                  lambda: store.unwritten)
    if refresher is not None:
        scheduled = refresher
        metrics.gauge("mxpolicyd_refresh_queue", "Domains scheduled for a refresh.",
                      lambda: scheduled.queue_depth)
    control = []
    if config.control.socket:
        os.makedirs(os.path.dirname(config.control.socket), mode=0o750, exist_ok=True)
        # Mode 660: the daemon's user and its group (the admins) only; the
        # lock file lets a restart replace a socket left by a crash.
        control = [
            ("unix:%s:mode=660:lockfile=1" % config.control.socket,
             ControlFactory(ControlCommands(cache).run, reactor))
        ]
    for description, serving in (
        [(d, factory) for d in config.socketmap.listen]
        + [(d, exim) for d in config.exim.listen]
        + [(d, site) for d in config.metrics.listen]
        + control
    ):
        endpoint = endpoints.serverFromString(reactor, description)
        listener = StreamServerEndpointService(endpoint, serving)
        listener._raiseSynchronously = True
        listener.setServiceParent(top)
    return Daemon(top, cache, store, responder, refresher, metrics, config, reactor, expiry)
