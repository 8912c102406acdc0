"""
The Redis wire: RESP2 commands out and replies in, on the reactor, for the
fleet store (L{mxpolicyd.store.redis}).

Debian bookworm packages no Twisted Redis client, and python3-redis blocks
or needs asyncio; the store needs five commands, so this is a small client
of its own.  L{ReplyParser} is the codec, L{RedisProtocol} pipelines
commands over one connection and matches replies to them in order, and
L{RedisClient} keeps one connection up with Twisted's L{ClientService}
(capped exponential back-off, AUTH/SELECT/PING before a connection is used)
and fails commands at once while there is none, so that a dead Redis costs
the daemon nothing but a log line when it goes and one when it is back.
"""

from __future__ import annotations

from collections import deque
from enum import Enum
from typing import Any, Callable, NoReturn, Sequence, TypeVar, cast

from automat import NoTransition
from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
    ITransport,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from mxpolicyd.ops.outage import Outage

Argument = bytes | str | int | float

T = TypeVar("T")

# What one reply may make the daemon hold (DESIGN: every peer may be
# hostile, Redis and whoever sits between it and the daemon too).  The
# largest value the store writes is one domain's state, a few KiB (a 64 KiB
# MTA-STS policy and 32 MX hosts' TLSA records at the very most, which the
# store refuses to write beyond MAX_BULK); a 1 MiB bulk string leaves room
# for that and is still nothing to the daemon's memory.
MAX_BULK = 1024 * 1024
# Arrays within arrays: the store's deepest reply is SCAN's, depth 2
# ([cursor, [keys]]); 4 leaves room for a transaction's or script's reply.
MAX_DEPTH = 4
# Array elements in one reply, nested ones included: SCAN ... COUNT 2000
# and MGET of its keys answer a few thousand.
MAX_ELEMENTS = 65536
# Bytes in one reply: 16 values of the largest size (the store asks MGET for
# at most MGET_KEYS keys at a time) and twice that for headroom.
MGET_KEYS = 16
MAX_REPLY = 2 * MGET_KEYS * MAX_BULK
# Longest line (simple string, error, length) accepted without its CRLF.
_MAX_LINE = 64 * 1024


class RedisError(Exception):
    """Redis answered a command with an error reply (C{-ERR ...})."""


class RedisUnavailable(Exception):
    """
    Redis cannot answer now: not connected, the connection dropped, or no
    reply came in time.  Callers carry on without it.
    """


class RedisProtocolError(ValueError):
    """The bytes from the server are not RESP2, or a reply is beyond a bound."""


def encode(args: Sequence[Argument]) -> bytes:
    """One command as a RESP array of bulk strings."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        if isinstance(arg, str):
            data = arg.encode("utf-8")
        elif isinstance(arg, bytes):
            data = arg
        elif isinstance(arg, (int, float)) and not isinstance(arg, bool):
            data = repr(arg).encode("ascii")
        else:
            raise TypeError("cannot send %r to Redis" % (arg,))
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


class ReplyParser:
    """
    Turns a byte stream into replies, however it is split.

    Replies: simple strings as C{str}, errors as L{RedisError} instances,
    integers as C{int}, bulk strings as C{bytes}, nulls as C{None}, arrays
    as lists (nested ones too).  A partial reply is kept with its parsing
    state, so a large array that arrives in many segments is read once.

    What a reply may hold is bounded (L{MAX_BULK}, L{MAX_DEPTH},
    L{MAX_ELEMENTS}, L{MAX_REPLY}) and checked as each length arrives,
    before anything is buffered for it: a reply beyond a bound raises
    L{RedisProtocolError}, as does anything that is not RESP2 (a length of
    -1 is the only null).  The stream cannot be trusted after that: every
    later C{feed} raises the same error.
    """

    def __init__(
        self,
        max_bulk: int = MAX_BULK,
        max_depth: int = MAX_DEPTH,
        max_elements: int = MAX_ELEMENTS,
        max_reply: int = MAX_REPLY,
    ) -> None:
        self._max_bulk = max_bulk
        self._max_depth = max_depth
        self._max_elements = max_elements
        self._max_reply = max_reply
        self._buffer = bytearray()
        # Arrays being filled: (expected length, items so far).
        self._arrays: list[tuple[int, list[Any]]] = []
        # The length of the bulk string whose body is awaited.
        self._bulk: int | None = None
        # Of the reply being read: array elements announced, and bytes.
        self._elements = 0
        self._bytes = 0
        self._failed: RedisProtocolError | None = None

    def feed(self, data: bytes) -> list[Any]:
        """The replies that C{data} completes; raises L{RedisProtocolError}."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._feed(data)
        except RedisProtocolError as e:
            self._failed = e
            self._buffer = bytearray()
            self._arrays = []
            raise

    def _feed(self, data: bytes) -> list[Any]:
        buffer = self._buffer
        buffer += data
        replies: list[Any] = []
        position = 0
        while True:
            value: Any
            if self._bulk is not None:
                end = position + self._bulk
                if len(buffer) < end + 2:
                    break
                if buffer[end : end + 2] != b"\r\n":
                    raise RedisProtocolError("bulk string not followed by CRLF")
                value = bytes(buffer[position:end])
                position = end + 2
                self._bulk = None
            else:
                eol = buffer.find(b"\r\n", position)
                if eol < 0:
                    if len(buffer) - position > _MAX_LINE:
                        raise RedisProtocolError("reply line longer than %d bytes" % _MAX_LINE)
                    break
                kind = buffer[position : position + 1]
                line = bytes(buffer[position + 1 : eol])
                self._count(eol + 2 - position)
                position = eol + 2
                if kind == b"+":
                    value = line.decode("utf-8", "replace")
                elif kind == b"-":
                    value = RedisError(line.decode("utf-8", "replace"))
                elif kind == b":":
                    value = _integer(line)
                elif kind == b"$":
                    length = _length(line, "a bulk string")
                    if length >= 0:
                        if length > self._max_bulk:
                            raise RedisProtocolError(
                                "bulk string of %d bytes, over the limit of %d"
                                % (length, self._max_bulk))
                        self._count(length + 2)
                        self._bulk = length
                        continue
                    value = None
                elif kind == b"*":
                    length = _length(line, "an array")
                    if len(self._arrays) >= self._max_depth:
                        raise RedisProtocolError(
                            "arrays nested deeper than %d" % self._max_depth)
                    if length > 0:
                        self._elements += length
                        if self._elements > self._max_elements:
                            raise RedisProtocolError(
                                "reply of more than %d array elements" % self._max_elements)
                        self._arrays.append((length, []))
                        continue
                    value = [] if length == 0 else None
                else:
                    raise RedisProtocolError("unknown reply type %r" % (kind,))
            # Place the value: in the innermost open array, closing every
            # array it completes, or as a reply of its own.
            complete = True
            while self._arrays:
                length, items = self._arrays[-1]
                items.append(value)
                if len(items) < length:
                    complete = False
                    break
                self._arrays.pop()
                value = items
            if complete:
                replies.append(value)
                self._elements = self._bytes = 0
        del buffer[:position]
        return replies

    def _count(self, size: int) -> None:
        """Add C{size} bytes to the reply being read, within its bound."""
        self._bytes += size
        if self._bytes > self._max_reply:
            raise RedisProtocolError("reply longer than %d bytes" % self._max_reply)


# Integers and lengths as Redis writes them: an optional minus and digits,
# at most 20 characters (int() would also take spaces, "+", "_", and
# thousands of digits).
def _integer(line: bytes) -> int:
    digits = line[1:] if line[:1] == b"-" else line
    if not digits.isdigit() or len(line) > 20:
        raise RedisProtocolError("%r is not an integer" % (line[:40],))
    return int(line)


def _length(line: bytes, what: str) -> int:
    """The length of C{what}: -1 (null) or a count; no other negative."""
    if line == b"-1":
        return -1
    if not line.isdigit() or len(line) > 20:
        raise RedisProtocolError("%r is not the length of %s" % (line[:40], what))
    return int(line)


class RedisProtocol(Protocol):
    """
    One connection: commands are written at once (pipelined) and each reply
    fires the oldest waiting Deferred.

    While replies are awaited, Redis must make progress: when no byte has
    arrived for C{timeout} seconds, every waiting command fails with
    L{RedisUnavailable} and the connection is aborted (after a timeout the
    order of the replies can no longer be trusted).
    """

    _log = Logger()

    def __init__(self, clock: IReactorTime, timeout: float = 2.0, address: str = "Redis") -> None:
        self._clock = clock
        self._timeout = timeout
        self.address = address
        self._parser = ReplyParser()
        self._waiting: deque[Deferred[Any]] = deque()
        self._timer: IDelayedCall | None = None
        self._progress = 0.0
        self._closed: Exception | None = None
        # Called once when an established connection ends.
        self.on_lost: Callable[[Failure], None] | None = None

    @property
    def waiting(self) -> int:
        """Commands sent and not yet answered."""
        return len(self._waiting)

    def execute(self, *args: Argument) -> Deferred[Any]:
        """
        Send one command; fires with its reply, or fails with L{RedisError}
        (an error reply) or L{RedisUnavailable} (no reply).
        """
        if self._closed is not None:
            return fail(self._closed)
        try:
            data = encode(args)
        except TypeError:
            return fail()
        d: Deferred[Any] = Deferred()
        if not self._waiting:
            self._progress = self._clock.seconds()
        self._waiting.append(d)
        assert self.transport is not None
        self.transport.write(data)
        self._arm()
        return d

    def handshake(self, password: str | None, db: int) -> Deferred[RedisProtocol]:
        """
        Make a new connection usable: AUTH, SELECT, then a PING.  Fires with
        the protocol itself (L{ClientService} prepares a connection through
        a proxy of it), or fails with L{RedisUnavailable}, the connection
        closed.
        """
        return Deferred.fromCoroutine(self._handshake(password, db))

    async def _handshake(self, password: str | None, db: int) -> RedisProtocol:
        step = "PING"
        try:
            if password is not None:
                step = "AUTH"
                await self.execute("AUTH", password)
            if db:
                step = "SELECT %d" % (db,)
                await self.execute("SELECT", db)
            step = "PING"
            await self.execute("PING")
        except BaseException as e:
            if self.transport is not None:
                self.transport.loseConnection()
            if isinstance(e, RedisError):
                hint = {
                    "AUTH": " (check store.redis_password)",
                    "PING": " (does it need a password? store.redis_password)",
                }.get(step, " (check store.redis_db)")
                raise RedisUnavailable("Redis refused %s: %s%s" % (step, e, hint)) from None
            raise
        return self

    def dataReceived(self, data: bytes) -> None:
        if self._closed is not None:
            return  # aborted: what was still in flight is not read
        self._progress = self._clock.seconds()
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as e:
            self._log.error(
                "Protocol error from {address}: {error}; dropping the connection "
                "and reconnecting",
                address=self.address,
                error=str(e),
            )
            self._abort(RedisUnavailable("Redis protocol error: %s" % (e,)))
            return
        for reply in replies:
            if not self._waiting:
                self._log.error(
                    "{address} sent a reply nobody asked for; dropping the connection",
                    address=self.address,
                )
                self._abort(RedisUnavailable("unexpected reply from Redis"))
                return
            d = self._waiting.popleft()
            # A cancelled command keeps its place: its reply is dropped.
            if isinstance(reply, RedisError):
                d.errback(reply)
            else:
                d.callback(reply)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        # Why it ended: after a timeout, the timeout, not the abort.
        cause = reason if self._closed is None else Failure(self._closed)
        if self._closed is None:
            self._closed = RedisUnavailable(
                "connection to Redis lost (%s)" % (reason.getErrorMessage(),)
            )
        self._fail_waiting(self._closed)
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None
        if self.on_lost is not None:
            on_lost, self.on_lost = self.on_lost, None
            on_lost(cause)

    def _arm(self) -> None:
        if self._timer is None and self._waiting:
            self._timer = self._clock.callLater(self._timeout, self._check)

    def _check(self) -> None:
        self._timer = None
        if not self._waiting:
            return
        idle = self._clock.seconds() - self._progress
        if idle < self._timeout:
            self._timer = self._clock.callLater(self._timeout - idle, self._check)
            return
        # The client and the store say what this means for the daemon.
        self._log.debug(
            "No reply from {address} within {timeout} s; failing {count} waiting "
            "commands and dropping the connection",
            address=self.address,
            timeout=self._timeout,
            count=len(self._waiting),
        )
        self._abort(
            RedisUnavailable("no reply from Redis within %g s" % (self._timeout,))
        )

    def _abort(self, reason: Exception) -> None:
        if self._closed is None:
            self._closed = reason
        self._fail_waiting(reason)
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

    def _fail_waiting(self, reason: Exception) -> None:
        while self._waiting:
            d = self._waiting.popleft()
            if not d.called:
                d.errback(Failure(reason))


def _deadline(d: Deferred[T], seconds: float, clock: IReactorTime, what: str) -> Deferred[T]:
    """C{d}, cancelled after C{seconds} with L{RedisUnavailable} saying C{what} did not happen."""

    def timed_out(result: object, timeout: float) -> NoReturn:
        raise RedisUnavailable("%s within %g s" % (what, timeout))

    return d.addTimeout(seconds, clock, onTimeoutCancel=timed_out)


class _Connections(Factory):
    """A L{RedisProtocol} per connection, quietly."""

    noisy = False

    def __init__(self, clock: IReactorTime, timeout: float, address: str) -> None:
        self._clock = clock
        self._timeout = timeout
        self._address = address

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return RedisProtocol(self._clock, self._timeout, self._address)


class _Guard(Protocol):
    """
    Stands between a transport and L{ClientService}'s proxy of the protocol,
    to absorb the service's L{NoTransition} when the connection ends.

    The service (Twisted 22.4 to 26 at least) has no transition for the
    loss of a connection it never took: one that C{prepareConnection}
    rejected, or that was being prepared when the service stopped.  By then
    it has counted the failed attempt and scheduled the retry (or stopped),
    so the loss is news to nobody; unabsorbed, the exception would escape
    C{connectionLost} into the reactor as an unhandled error.
    """

    def __init__(self, wrapped: IProtocol) -> None:
        self.wrapped = wrapped

    def makeConnection(self, transport: ITransport) -> None:
        self.wrapped.makeConnection(transport)

    def dataReceived(self, data: bytes) -> None:
        self.wrapped.dataReceived(data)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            self.wrapped.connectionLost(reason)
        except NoTransition:
            pass


class _Guarded(Factory):
    """Puts a L{_Guard} in front of each of ClientService's protocols."""

    noisy = False

    def __init__(self, factory: IProtocolFactory) -> None:
        self._factory = factory

    def buildProtocol(self, addr: Any) -> _Guard | None:
        wrapped = self._factory.buildProtocol(addr)
        return None if wrapped is None else _Guard(wrapped)


@implementer(IStreamClientEndpoint)
class _Attempts:
    """
    The endpoint as L{ClientService} sees it: each connect is one attempt,
    given C{timeout} seconds, that the client hears of when it starts and
    when it fails.
    """

    def __init__(
        self,
        endpoint: IStreamClientEndpoint,
        clock: IReactorTime,
        timeout: float,
        address: str,
        started: Callable[[], None],
        failed: Callable[[Failure], Failure],
    ) -> None:
        self._endpoint = endpoint
        self._clock = clock
        self._timeout = timeout
        self._address = address
        self._started = started
        self._failed = failed

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        self._started()
        d = _deadline(
            self._endpoint.connect(_Guarded(protocolFactory)),
            self._timeout,
            self._clock,
            "no connection",
        )
        # ClientService expects the protocol its factory built, not the guard.
        return d.addCallbacks(lambda guard: cast(_Guard, guard).wrapped, self._failed)

    def __repr__(self) -> str:
        # ClientService names the endpoint in its own log lines.
        return self._address


class _Link(Enum):
    """
    Where L{RedisClient}'s connection is.  L{ClientService} runs the
    connection's life; the client needs to know whether commands can go
    out and, when not, whether an attempt is under way: L{RedisClient.ready}
    waits for one, but not for a retry that may be 30 s away.
    """

    STOPPED = "stopped"
    CONNECTING = "connecting"
    CONNECTED = "connected"
    WAITING = "waiting to retry"


# What ended the last attempt or connection, to be said with the delay
# before the next one.
_CANNOT_CONNECT = "Cannot connect to {address} ({error}); retrying in {delay:g} s"
_LOST = "Lost the connection to {address} ({error}); reconnecting in {delay:g} s"


class RedisClient:
    """
    One Redis server, kept connected.

    Commands go out only over an established connection (after AUTH,
    SELECT and a PING have succeeded); otherwise they fail at once with
    L{RedisUnavailable}, so nothing queues while Redis is away.  A dropped
    connection or a failed attempt is retried after 1, 2, 4, ... seconds,
    at most C{max_delay}; an outage is logged when it starts and when it
    ends.
    """

    _log = Logger()

    def __init__(
        self,
        reactor: Any,
        endpoint: str = "tcp:127.0.0.1:6379",
        password: str | None = None,
        db: int = 0,
        timeout: float = 2.0,
        min_delay: float = 1.0,
        max_delay: float = 30.0,
    ) -> None:
        """
        @param endpoint: a Twisted client endpoint string
            (C{tcp:HOST:PORT}, C{unix:/path/to/redis.sock}).
        @param timeout: seconds allowed for connecting, for the handshake,
            and for Redis to make progress while commands wait.
        """
        self.address = "Redis at " + endpoint
        self._clock: IReactorTime = reactor
        self._password = password
        self._db = db
        self._timeout = timeout
        # ClientService counts failed attempts from 1, and delays the first
        # retry by initialDelay * factor.
        self._backoff = backoffPolicy(
            initialDelay=min_delay / 2, maxDelay=max_delay, factor=2.0, jitter=lambda: 0.0
        )
        attempts = _Attempts(
            clientFromString(reactor, endpoint),
            reactor,
            timeout,
            self.address,
            started=self._attempting,
            failed=self._rejected,
        )
        self._service = ClientService(
            attempts,
            _Connections(reactor, timeout, self.address),
            retryPolicy=self._retry,
            clock=reactor,
            prepareConnection=self._prepare,
        )
        self._link = _Link.STOPPED
        # The connection, while CONNECTED.
        self._protocol: RedisProtocol | None = None
        self._why = (_CANNOT_CONNECT, "")
        self._outage = Outage(self._log, reactor.seconds)
        self._listeners: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return self._link is _Link.CONNECTED

    def on_connect(self, listener: Callable[[], None]) -> None:
        """Call C{listener()} after every (re)connection, once it is usable."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Connect in the background; lookups never wait for this."""
        if not self._service.running:
            self._service.startService()

    def stop(self) -> Deferred[None]:
        """Close the connection and stop reconnecting; fires once closed."""
        self._link = _Link.STOPPED
        self._protocol = None
        if not self._service.running:
            return succeed(None)
        return self._service.stopService()

    def ready(self) -> Deferred[None]:
        """
        Fires when connected: at once, or when the attempt under way
        succeeds.  Fails with L{RedisUnavailable} when that attempt fails or
        none is under way (the client is waiting to retry).
        """
        if self._link is _Link.CONNECTED:
            return succeed(None)
        if self._link is not _Link.CONNECTING:
            return fail(RedisUnavailable("not connected to Redis"))
        d = self._service.whenConnected(failAfterFailures=1)
        return d.addCallbacks(lambda _: None, self._unavailable)

    def execute(self, *args: Argument) -> Deferred[Any]:
        """
        Send one command now (pipelined behind those in flight); fails
        with L{RedisUnavailable} while there is no connection.
        """
        if self._protocol is None:
            return fail(RedisUnavailable("not connected to Redis"))
        return self._protocol.execute(*args)

    # -- what ClientService tells us, in the order it happens --------------

    def _attempting(self) -> None:
        self._link = _Link.CONNECTING

    def _prepare(self, protocol: IProtocol) -> Deferred[None]:
        """A new connection: usable once the handshake is done in time."""
        handshake = cast(RedisProtocol, protocol).handshake(self._password, self._db)
        d = _deadline(handshake, self._timeout, self._clock, "no answer to AUTH/SELECT/PING")
        return d.addCallbacks(self._connected, self._rejected)

    def _connected(self, protocol: RedisProtocol) -> None:
        self._link = _Link.CONNECTED
        self._protocol = protocol
        protocol.on_lost = lambda reason: self._lost(protocol, reason)
        if not self._outage.ended("Reconnected to {address} after {seconds:.0f} s",
                                  address=self.address):
            self._log.info("Connected to {address}", address=self.address)
        for listener in list(self._listeners):
            listener()

    def _rejected(self, failure: Failure) -> Failure:
        """An attempt failed: connecting, or its handshake.  ClientService retries it."""
        if self._link is _Link.CONNECTING:
            self._link = _Link.WAITING
            self._why = (_CANNOT_CONNECT, failure.getErrorMessage())
        return failure

    def _lost(self, protocol: RedisProtocol, reason: Failure) -> None:
        if self._protocol is not protocol:
            return
        self._link = _Link.WAITING
        self._protocol = None
        self._why = (_LOST, reason.getErrorMessage())

    def _retry(self, attempt: int) -> float:
        """
        The delay before the next attempt.  ClientService asks for it when
        it schedules that attempt: the moment to say why, and when.
        """
        delay: float = self._backoff(attempt)
        line, error = self._why
        self._outage.failed(line, address=self.address, error=error, delay=delay)
        return delay

    def _unavailable(self, failure: Failure) -> NoReturn:
        if failure.check(CancelledError):
            raise RedisUnavailable("Redis client stopped")
        raise RedisUnavailable("cannot connect to Redis (%s)" % (failure.getErrorMessage(),))
