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
from mxpolicyd.config.load import Config, ConfigError, load
from mxpolicyd.evidence.dane_lookups import DaneEvaluator
from mxpolicyd.evidence.evaluator import Evaluator
from mxpolicyd.evidence.sts_discovery import StsEvaluator
from mxpolicyd.net.dns import Resolver, system_nameservers
from mxpolicyd.net.https import PolicyFetcher
from mxpolicyd.net.redis import RedisClient
from mxpolicyd.ops.metrics import Metrics, MetricsResource
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


def make_store(config: Config, reactor: Any) -> tuple[DurableStore, Callable[[], None]]:
    """
    The durable store the config asks for, opened, and what stops its
    machinery after the last flush.
    """
    if config.store.backend == "redis":
        client = RedisClient(
            reactor,
            config.store.redis,
            password=config.store.redis_password,
            db=config.store.redis_db,
        )
        redis = RedisStore(
            client, reactor, window=config.refresh.window, prefix=config.store.key_prefix
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
        os.makedirs(os.path.dirname(config.control.socket), exist_ok=True)
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
