"""
The Redis wire: RESP2 commands out and replies in, on the reactor, for the
fleet store (L{mxpolicyd.store.redis}).

Debian bookworm packages no Twisted Redis client, and python3-redis blocks
or needs asyncio; the store needs five commands, so this is a small client
of its own.  L{ReplyParser} is the codec, L{RedisProtocol} pipelines
commands over one connection and matches replies to them in order, and
L{RedisClient} keeps one connection up (reconnecting with capped exponential
back-off) and fails commands at once while there is none, so that a dead
Redis costs the daemon nothing but log lines.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure

Argument = bytes | str | int | float

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
    """The bytes from the server are not RESP2."""


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
    """

    def __init__(self) -> None:
        self._buffer = bytearray()
        # Arrays being filled: (expected length, items so far).
        self._arrays: list[tuple[int, list[Any]]] = []
        # The length of the bulk string whose body is awaited.
        self._bulk: int | None = None

    def feed(self, data: bytes) -> list[Any]:
        """The replies that C{data} completes; raises L{RedisProtocolError}."""
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
                position = eol + 2
                if kind == b"+":
                    value = line.decode("utf-8", "replace")
                elif kind == b"-":
                    value = RedisError(line.decode("utf-8", "replace"))
                elif kind == b":":
                    value = _number(line)
                elif kind == b"$":
                    length = _number(line)
                    if length >= 0:
                        self._bulk = length
                        continue
                    value = None
                elif kind == b"*":
                    length = _number(line)
                    if length > 0:
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
        del buffer[:position]
        return replies


def _number(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise RedisProtocolError("%r is not a number" % (line,)) from None


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

    def dataReceived(self, data: bytes) -> None:
        self._progress = self._clock.seconds()
        try:
            replies = self._parser.feed(data)
        except RedisProtocolError as e:
            self._log.error(
                "{address} sent something that is not RESP2 ({error}); dropping "
                "the connection",
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


class _OneConnection(Factory):
    """Hands the endpoint the protocol of one connection attempt, quietly."""

    noisy = False

    def __init__(self, protocol: RedisProtocol) -> None:
        self._protocol = protocol

    def buildProtocol(self, addr: Any) -> RedisProtocol:
        return self._protocol


class RedisClient:
    """
    One Redis server, kept connected.

    Commands go out only over an established connection (after AUTH,
    SELECT and a PING have succeeded); otherwise they fail at once with
    L{RedisUnavailable}, so nothing queues while Redis is away.  A dropped
    connection or a failed attempt is retried after 1, 2, 4, ... seconds,
    at most C{max_delay}.
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
        @param timeout: seconds allowed for a connection attempt, and for
            Redis to make progress while commands wait.
        """
        self.address = "Redis at " + endpoint
        self._clock: IReactorTime = reactor
        self._endpoint = clientFromString(reactor, endpoint)
        self._password = password
        self._db = db
        self._timeout = timeout
        self._min_delay = min_delay
        self._max_delay = max_delay
        self._protocol: RedisProtocol | None = None
        self._attempt: Deferred[RedisProtocol] | None = None
        self._retry: IDelayedCall | None = None
        self._failures = 0
        # When the connection was last lost (None while connected): the
        # first failure of an outage is a warning, the retries are debug.
        self._down_since: float | None = None
        self._running = False
        self._ready: list[Deferred[None]] = []
        self._listeners: list[Callable[[], None]] = []

    @property
    def connected(self) -> bool:
        return self._protocol is not None

    def on_connect(self, listener: Callable[[], None]) -> None:
        """Call C{listener()} after every (re)connection, once it is usable."""
        self._listeners.append(listener)

    def start(self) -> None:
        """Connect in the background; lookups never wait for this."""
        if not self._running:
            self._running = True
            self._connect()

    def stop(self) -> None:
        """Close the connection and stop reconnecting."""
        self._running = False
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._attempt is not None:
            self._attempt.cancel()
        if self._protocol is not None:
            protocol, self._protocol = self._protocol, None
            protocol.on_lost = None
            assert protocol.transport is not None
            protocol.transport.loseConnection()
        self._release(RedisUnavailable("Redis client stopped"))

    def ready(self) -> Deferred[None]:
        """
        Fires when connected: at once, or when the attempt under way
        succeeds.  Fails with L{RedisUnavailable} when that attempt fails or
        none is under way (the client is waiting to retry).
        """
        if self._protocol is not None:
            return succeed(None)
        if self._attempt is None:
            return fail(RedisUnavailable("not connected to Redis"))
        d: Deferred[None] = Deferred()
        self._ready.append(d)
        return d

    def execute(self, *args: Argument) -> Deferred[Any]:
        """
        Send one command now (pipelined behind those in flight); fails
        with L{RedisUnavailable} while there is no connection.
        """
        if self._protocol is None:
            return fail(RedisUnavailable("not connected to Redis"))
        return self._protocol.execute(*args)

    def _connect(self) -> None:
        self._retry = None
        protocol = RedisProtocol(self._clock, self._timeout, self.address)
        connecting: Deferred[Any] = self._endpoint.connect(_OneConnection(protocol))
        connecting.addTimeout(self._timeout, self._clock)
        connecting.addCallback(lambda _: Deferred.fromCoroutine(self._handshake(protocol)))
        self._attempt = connecting
        connecting.addCallbacks(self._connected, self._failed)

    async def _handshake(self, protocol: RedisProtocol) -> RedisProtocol:
        step = "PING"
        try:
            if self._password is not None:
                step = "AUTH"
                await protocol.execute("AUTH", self._password)
            if self._db:
                step = "SELECT %d" % (self._db,)
                await protocol.execute("SELECT", self._db)
            step = "PING"
            await protocol.execute("PING")
        except BaseException as e:
            if protocol.transport is not None:
                protocol.transport.loseConnection()
            if isinstance(e, RedisError):
                hint = {
                    "AUTH": " (check store.redis_password)",
                    "PING": " (does it need a password? store.redis_password)",
                }.get(step, " (check store.redis_db)")
                raise RedisUnavailable("Redis refused %s: %s%s" % (step, e, hint)) from None
            raise
        return protocol

    def _connected(self, protocol: RedisProtocol) -> None:
        self._attempt = None
        if not self._running:
            assert protocol.transport is not None
            protocol.transport.loseConnection()
            return
        self._protocol = protocol
        protocol.on_lost = lambda reason: self._lost(protocol, reason)
        if self._down_since is not None:
            self._log.info(
                "Reconnected to {address} after {seconds:.0f} s",
                address=self.address,
                seconds=self._clock.seconds() - self._down_since,
            )
        else:
            self._log.info("Connected to {address}", address=self.address)
        self._down_since = None
        self._failures = 0
        self._release(None)
        for listener in list(self._listeners):
            listener()

    def _failed(self, failure: Failure) -> None:
        self._attempt = None
        self._release(
            RedisUnavailable("cannot connect to Redis (%s)" % (failure.getErrorMessage(),))
        )
        if not self._running:
            return
        self._failures += 1
        delay = self._delay()
        log = self._log.debug if self._down_since is not None else self._log.warn
        log(
            "Cannot connect to {address} ({error}); retrying in {delay:g} s",
            address=self.address,
            error=failure.getErrorMessage(),
            delay=delay,
        )
        if self._down_since is None:
            self._down_since = self._clock.seconds()
        self._retry = self._clock.callLater(delay, self._connect)

    def _lost(self, protocol: RedisProtocol, reason: Failure) -> None:
        if self._protocol is not protocol:
            return
        self._protocol = None
        if not self._running:
            return
        self._failures = 1
        delay = self._delay()
        self._log.warn(
            "Lost the connection to {address} ({error}); reconnecting in {delay:g} s",
            address=self.address,
            error=reason.getErrorMessage(),
            delay=delay,
        )
        self._down_since = self._clock.seconds()
        self._retry = self._clock.callLater(delay, self._connect)

    def _delay(self) -> float:
        """Seconds before the next attempt, after C{_failures} failures."""
        exponent = min(self._failures - 1, 30)
        return float(min(self._max_delay, self._min_delay * 2**exponent))

    def _release(self, error: Exception | None) -> None:
        waiting, self._ready = self._ready, []
        for d in waiting:
            if d.called:
                continue
            if error is None:
                d.callback(None)
            else:
                d.errback(Failure(error))
