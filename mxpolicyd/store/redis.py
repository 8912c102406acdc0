"""
The fleet store: domain states in Redis, shared by every daemon of a fleet,
written behind the memory layer like L{mxpolicyd.store.sqlite.SQLiteStore}.

Each domain is one key, C{<prefix>d:<domain>}, holding the JSON state and
when a lookup last asked for it, with a TTL long enough for the refresh
window, for any cached MTA-STS policy (RFC 8461: a policy is kept until
its max_age runs out) and for the downgrade memory, so Redis forgets
long-unused domains by itself.  A
short lease key, C{<prefix>l:<domain>}, makes one daemon refresh a domain
for the fleet while the others adopt its result.  Redis is never on the hot
path: puts are batched and flushed by a timer (L{WriteBehind}); when Redis
is away the batch stays in memory, the daemon keeps answering from its cache
and refreshing on its own, and the batch is written as soon as the
connection is back.

A write never replaces what the fleet stored: each state is merged over the
stored one by an injected rule (L{mxpolicyd.policy.merge.written}) and set
with a compare-and-set script, retried with the newer value when another
daemon wrote in between; a write that found more in the store tells the
cache (L{RedisStore.on_merged}).
"""

from __future__ import annotations

import json
import math
import os
import secrets
import socket
from typing import Any, Callable, Iterator, cast

from twisted.internet.defer import (
    Deferred,
    DeferredList,
    FirstError,
    fail,
    gatherResults,
    succeed,
)
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mxpolicyd.evidence.state import DomainState
from mxpolicyd.net.redis import (
    MAX_BULK,
    MGET_KEYS,
    RedisClient,
    RedisError,
    RedisUnavailable,
)
from mxpolicyd.ops.outage import Outage
from mxpolicyd.store.base import Stored
from mxpolicyd.store.writebehind import Batch, WriteBehind

# What is written of a domain: its state, when it was last used, and
# whether an administrator acknowledged it.
_Write = tuple[DomainState, float, bool]

# The state to write over a stored one: merge(ours, stored, now,
# acknowledged).
Merge = Callable[[DomainState, DomainState, float, bool], DomainState]

# Compare-and-set, run by Redis in one step: set the key to ARGV[2] with a
# TTL of ARGV[3] ms if it still holds ARGV[1] ("" for no key); otherwise
# answer what it holds now.  A script rather than WATCH/MULTI/EXEC: those
# belong to a connection, and every command of the daemon is pipelined
# over one, leases and reads included.
CAS = """\
local current = redis.call('GET', KEYS[1]) or ''
if current ~= ARGV[1] then
  return current
end
redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3])
return 1
"""
# Tries of one write against other daemons' writes, per flush.
_ATTEMPTS = 3


def _as_is(ours: DomainState, stored: DomainState, now: float,
           acknowledged: bool) -> DomainState:
    return ours


class _Contended(RedisUnavailable):
    """Other daemons kept writing a domain's key: its write waits for the next flush."""


def daemon_id() -> str:
    """Who holds a lease: unique per daemon process, readable in redis-cli."""
    return "%s/%d/%s" % (socket.gethostname(), os.getpid(), secrets.token_hex(4))


def ttl(state: DomainState, now: float, window: float, memory: float = 0.0) -> float:
    """
    Seconds Redis keeps a domain's key after a write: the refresh window
    (a domain still in use is rewritten before that), and never less than
    the cached MTA-STS policy has left to live, nor than the downgrade
    memory has (C{memory} seconds after it was last seen; 0 with downgrade
    protection off).
    """
    keep = window
    if state.sts.policy is not None:
        keep = max(keep, state.sts.expires_at - now)
    if memory > 0 and state.memory is not None:
        keep = max(keep, state.memory.seen_at + memory - now)
    return keep


def _milliseconds(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _first_error(failure: Failure) -> Failure:
    """What failed in a gatherResults: the command's own failure."""
    error = failure.value
    if isinstance(error, FirstError):
        return cast(Failure, error.subFailure)
    return failure


def _glob_escape(text: str) -> str:
    return "".join("\\" + c if c in "*?[]\\" else c for c in text)


class _Walk:
    """Where a L{RedisStore.scan} has got to."""

    def __init__(self) -> None:
        self.cursor = b"0"
        self.done = False
        self.bad = 0


class RedisStore:
    """Domain states by name in Redis; puts batched, flushed pipelined."""

    shared = True

    _log = Logger()

    def __init__(
        self,
        client: RedisClient,
        clock: IReactorTime,
        window: float,
        prefix: str = "mxpolicyd:",
        owner: str | None = None,
        chunk: int = 1000,
        memory: float = 0.0,
        merge: Merge = _as_is,
    ) -> None:
        """
        @param window: the refresh window: a domain unused for this long
            may be forgotten (unless its MTA-STS policy is still valid).
        @param memory: how long the downgrade memory is kept after it was
            last seen (policy.downgrade_memory_days; 0 with policy.downgrade
            off): a domain holding it is kept that long too.
        @param owner: this daemon's name in lease keys.
        @param chunk: commands per pipelined round trip when flushing.
        @param merge: the state to write over a stored one (by default
            ours as it is: the newest write wins).
        """
        self._merge = merge
        self._listeners: list[Callable[[str, DomainState], None]] = []
        self._client = client
        self._clock = clock
        self._window = window
        self._memory = memory
        self._prefix = prefix
        self._owner = owner if owner is not None else daemon_id()
        self._chunk = chunk
        self.path = client.address
        self._writes: WriteBehind[_Write] = WriteBehind(
            self._write, self._written, self._not_written
        )
        # Redis away, or refusing writes, is logged when it starts and when
        # it ends, not at every flush.
        self._outage = Outage(self._log, clock.seconds)
        client.on_connect(self._reconnected)

    def _key(self, domain: str) -> str:
        return "%sd:%s" % (self._prefix, domain)

    def _lease_key(self, domain: str) -> str:
        return "%sl:%s" % (self._prefix, domain)

    def open(self) -> None:
        """Start connecting; start-up does not wait for Redis."""
        self._client.start()

    def close(self) -> None:
        if self._writes:
            self._log.warn(
                "Stopping with {count} domain states not written to {address}; "
                "the fleet re-evaluates them",
                count=len(self._writes),
                address=self.path,
            )
        self._client.stop()

    # -- reading ---------------------------------------------------------

    def get(self, domain: str) -> Deferred[Stored | None]:
        """One domain; fails with L{RedisUnavailable} when Redis is away."""
        if domain in self._writes:
            # Not yet written: the newest state is in memory.
            change = self._writes[domain]
            return succeed(None if change is None else (domain, change[0], change[1]))
        d: Deferred[Any] = self._client.ready()
        d.addCallback(lambda _: self._client.execute("GET", self._key(domain)))
        d.addCallback(lambda raw: None if raw is None else self._decode(domain, raw, True))
        return d

    def scan(self, batch: int = 2000) -> Iterator[Deferred[list[Stored]]]:
        """
        Every stored domain, a batch at a time (SCAN, then MGET of the keys
        it found).  When Redis cannot be read the walk ends with a warning:
        the daemon serves and evaluates without it.
        """
        walk = _Walk()
        pattern = _glob_escape(self._prefix) + "d:*"
        d: Deferred[Any] = self._client.ready()
        while True:
            d.addCallback(
                lambda _: self._client.execute(
                    "SCAN", walk.cursor, "MATCH", pattern, "COUNT", batch
                )
            )
            d.addCallback(self._scanned, walk)
            d.addErrback(self._scan_failed, walk)
            yield d
            if walk.done:
                break
            d = succeed(None)
        if walk.bad:
            self._log.warn(
                "Skipped {count} unreadable domain states in {address}",
                count=walk.bad,
                address=self.path,
            )

    def _scanned(self, reply: Any, walk: _Walk) -> Deferred[list[Stored]] | list[Stored]:
        cursor, keys = reply
        walk.cursor = cursor
        walk.done = cursor == b"0"
        if not keys:
            return []
        # A few keys per MGET, pipelined: one reply may hold only so many
        # bytes (MAX_REPLY), and MGET_KEYS values of the largest size fit.
        parts = [keys[i : i + MGET_KEYS] for i in range(0, len(keys), MGET_KEYS)]
        d = gatherResults(
            [self._client.execute("MGET", *part) for part in parts], consumeErrors=True
        )
        d.addErrback(_first_error)
        d.addCallback(lambda values: self._found(
            [v for chunk in values for v in chunk], keys, walk))
        return d

    def _found(self, values: list[Any], keys: list[bytes], walk: _Walk) -> list[Stored]:
        start = len(self._prefix.encode("utf-8")) + 2
        found = []
        for key, raw in zip(keys, values):
            if raw is None:
                continue  # expired or deleted since SCAN saw it
            domain = key[start:].decode("utf-8", "replace")
            row = self._decode(domain, raw, walk.bad < 10)
            if row is None:
                walk.bad += 1
            else:
                found.append(row)
        return found

    def _scan_failed(self, failure: Failure, walk: _Walk) -> list[Stored]:
        walk.done = True
        if failure.check(RedisUnavailable, RedisError) is None:
            self._log.failure(
                "Reading domain states from {address} failed; serving and "
                "evaluating domains without them",
                failure,
                address=self.path,
            )
            return []
        self._log.warn(
            "Cannot read domain states from {address} ({error}); serving and "
            "evaluating domains without them",
            address=self.path,
            error=failure.getErrorMessage(),
        )
        return []

    def _decode(self, domain: str, raw: bytes, log: bool) -> Stored | None:
        try:
            value = json.loads(raw)
            used = value["used"]
            if isinstance(used, bool) or not isinstance(used, (int, float)):
                raise ValueError("used is not a number")
            return (domain, DomainState.from_json(value["state"]), float(used))
        except (ValueError, TypeError, KeyError) as e:
            if log:
                self._log.warn(
                    "Skipping unreadable stored state of {domain} in {address}: {error}",
                    domain=domain,
                    address=self.path,
                    error=str(e),
                )
            return None

    # -- fleet coordination ---------------------------------------------------

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        """
        Whether this daemon refreshes C{domain} now: yes when it takes (or
        already holds) the lease, no while another daemon holds it, and yes
        when Redis cannot be asked, so that answers stay fresh.
        """
        if not self._client.connected:
            return succeed(True)
        key = self._lease_key(domain)
        span = _milliseconds(seconds)
        d = self._client.execute("SET", key, self._owner, "NX", "PX", span)
        d.addCallback(self._leased, key, span)
        d.addErrback(self._lease_failed, domain)
        return d

    def _leased(self, reply: Any, key: str, span: int) -> bool | Deferred[bool]:
        if reply is not None:
            return True
        # Held: by another daemon, or by this one since an earlier refresh.
        # A daemon that keeps refreshing a domain keeps its lease, so the
        # fleet does not trade it back and forth.
        d = self._client.execute("GET", key)
        d.addCallback(self._held, key, span)
        return d

    def _held(self, holder: Any, key: str, span: int) -> bool | Deferred[bool]:
        if holder != self._owner.encode("utf-8"):
            return False
        d = self._client.execute("PEXPIRE", key, span)
        return d.addCallback(lambda _: True)

    def _lease_failed(self, failure: Failure, domain: str) -> bool:
        failure.trap(RedisUnavailable, RedisError)
        self._log.debug(
            "Cannot take the lease on {domain} in {address} ({error}); refreshing "
            "it here",
            domain=domain,
            address=self.path,
            error=failure.getErrorMessage(),
        )
        return True

    # -- writing -----------------------------------------------------------

    def put(self, domain: str, state: DomainState, used_at: float = 0.0,
            acknowledged: bool = False) -> None:
        if not acknowledged and domain in self._writes:
            # An acknowledgement not yet written stays one: the state put
            # after it carries the memory the administrator accepted.
            pending = self._writes[domain]
            acknowledged = pending is not None and pending[2]
        self._writes.put(domain, (state, used_at, acknowledged))

    def delete(self, domain: str) -> None:
        self._writes.delete(domain)

    def on_merged(self, listener: Callable[[str, DomainState], None]) -> None:
        self._listeners.append(listener)

    @property
    def unwritten(self) -> int:
        return len(self._writes)

    def flush(self) -> Deferred[None]:
        """
        Write the unwritten states, pipelined; one flush at a time.  What
        cannot be written stays in memory (newer puts win) for the next
        flush.
        """
        return self._writes.flush()

    def _write(self, batch: Batch[_Write]) -> Deferred[object]:
        if not self._client.connected:
            # The batch waits, rather than fail a command per state.
            return fail(RedisUnavailable("not connected to Redis"))
        return Deferred.fromCoroutine(self._pipeline(batch))

    async def _pipeline(self, batch: Batch[_Write]) -> None:
        """
        Send the batch a chunk per round trip (a state's read, then its
        compare-and-set); what is confirmed leaves the batch, so that a
        failure keeps only what was not written.
        """
        items = list(batch.items())
        for start in range(0, len(items), self._chunk):
            part = items[start : start + self._chunk]
            results = await DeferredList(
                [Deferred.fromCoroutine(self._command(domain, write)) for domain, write in part],
                consumeErrors=True,
            )
            failed = None
            for (domain, _), (ok, result) in zip(part, results):
                if ok:
                    del batch[domain]
                elif failed is None:
                    failed = result
            if failed is not None:
                failed.raiseException()

    async def _command(self, domain: str, write: _Write | None) -> None:
        key = self._key(domain)
        if write is None:
            await self._client.execute("DEL", key)
            return
        state, used, acknowledged = write
        current = await self._client.execute("GET", key)
        for _ in range(_ATTEMPTS):
            now = self._clock.seconds()
            stored = None if not current else self._decode(domain, current, True)
            merged = state
            if stored is not None:
                merged = self._merge(state, stored[1], now, acknowledged)
                # A far-future "used" of another's would keep the key forever.
                used = max(used, min(stored[2], now))
            text = json.dumps({"state": merged.to_json(), "used": used}, separators=(",", ":"))
            if len(text) > MAX_BULK:  # ASCII: json.dumps escapes the rest
                # Unreadable for every daemon (the Redis client refuses
                # replies beyond MAX_BULK): kept in this daemon's memory only.
                self._log.warn(
                    "Not storing the state of {domain} in {address}: {size} bytes, over "
                    "the {limit} a reply may hold; this daemon keeps it in memory and "
                    "the others evaluate the domain themselves",
                    domain=domain, address=self.path, size=len(text), limit=MAX_BULK,
                )
                return
            keep = _milliseconds(ttl(merged, now, self._window, self._memory))
            reply = await self._client.execute(
                "EVAL", CAS, 1, key, current or b"", text, keep)
            if reply == 1:
                if merged != state:
                    for listener in list(self._listeners):
                        listener(domain, merged)
                return
            if not isinstance(reply, bytes):
                raise RedisError("unexpected compare-and-set reply %r" % (reply,))
            current = reply  # another daemon wrote meanwhile: merge with that
        raise _Contended(
            "the state of %s changed under %d writes by other daemons" % (domain, _ATTEMPTS))

    def _written(self, count: int) -> None:
        self._outage.ended(
            "{address} is back; wrote {count} domain states kept in memory since {since}",
            address=self.path,
            count=count,
        )

    def _not_written(self, failure: Failure, count: int) -> None:
        if failure.check(_Contended):
            self._log.info(
                "Writing to {address} again at the next flush: {error}",
                address=self.path,
                error=failure.getErrorMessage(),
            )
        elif failure.check(RedisUnavailable, RedisError) is None:
            self._log.failure(
                "Writing {count} domain states to {address} failed; keeping them "
                "in memory and retrying",
                failure,
                count=count,
                address=self.path,
            )
        elif failure.check(RedisError):
            self._outage.failed(
                "{address} refused to store domain states ({error}); keeping "
                "{count} domain states in memory and retrying",
                level=LogLevel.error,
                address=self.path,
                error=failure.getErrorMessage(),
                count=len(self._writes),
            )
        else:
            self._outage.failed(
                "{address} unreachable ({error}); keeping {count} domain states "
                "in memory and retrying",
                address=self.path,
                error=failure.getErrorMessage(),
                count=len(self._writes),
            )

    def _reconnected(self) -> None:
        """Resynchronise at once: write what piled up while Redis was away."""
        if self._writes:
            self.flush()
