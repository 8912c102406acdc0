"""
The receiving end of the delivery tests: small SMTP servers on loopback port
25, one per MX address, that offer STARTTLS with a certificate chosen by the
test and record what Postfix's smtp(8) did: whether it upgraded to TLS, the
SNI it sent, and every message it handed over.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Iterator

from .addresses import SMTP_PORT, bind_error
from .pki import Pair

# RFC 5321 s4.5.3.1.4: a command line is at most 512 octets; a text line of
# DATA at most 1000.  A little slack costs nothing in a test.
MAX_LINE = 4096


@dataclass
class Session:
    """One SMTP connection as the sink saw it."""

    peer: str
    helo: list[str] = field(default_factory=list)
    starttls: bool = False
    tls: bool = False
    tls_version: str | None = None
    sni: str | None = None
    tls_error: str | None = None
    commands: list[str] = field(default_factory=list)
    closed: bool = False


@dataclass(frozen=True)
class Message:
    """A message the sink accepted (answered 250 to the end of DATA)."""

    mail_from: str
    rcpt_to: tuple[str, ...]
    data: bytes
    tls: bool
    sni: str | None
    helo: str


class _Reply(Exception):
    """Ends the current command with this reply line."""


class _Connection:
    """The server side of one SMTP conversation (RFC 5321 and RFC 3207)."""

    def __init__(self, sink: SmtpSink, sock: socket.socket, session: Session) -> None:
        self.sink = sink
        self.sock = sock
        self.session = session
        self.buffer = b""
        self.mail_from: str | None = None
        self.rcpt_to: list[str] = []
        self.helo = ""

    def reply(self, text: str) -> None:
        self.sock.sendall(text.encode("ascii") + b"\r\n")

    def readline(self) -> bytes | None:
        """One line with its end, or None at EOF."""
        while b"\n" not in self.buffer:
            if len(self.buffer) > MAX_LINE:
                raise _Reply("500 5.5.2 Line too long")
            chunk = self.sock.recv(65536)
            if not chunk:
                return None
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line + b"\n"

    def run(self) -> None:
        self.reply(f"220 {self.sink.name} ESMTP mxpolicyd test sink")
        while True:
            line = self.readline()
            if line is None:
                return
            command = line.rstrip(b"\r\n").decode("ascii", "replace")
            self.session.commands.append(command)
            verb, _, argument = command.partition(" ")
            method: Callable[[str], bool | None] | None = getattr(
                self, "smtp_" + verb.upper(), None
            )
            if method is None:
                self.reply("502 5.5.1 Command not recognized")
                continue
            try:
                if method(argument.strip()):
                    return
            except _Reply as r:
                self.reply(str(r))

    def _reset(self) -> None:
        self.mail_from = None
        self.rcpt_to = []

    def smtp_EHLO(self, argument: str) -> None:
        self.helo = argument
        self.session.helo.append(argument)
        self._reset()
        lines = [self.sink.name, "8BITMIME", "SIZE 10240000"]
        if not self.session.tls and self.sink.context_factory is not None:
            lines.append("STARTTLS")
        for line in lines[:-1]:
            self.reply("250-" + line)
        self.reply("250 " + lines[-1])

    def smtp_HELO(self, argument: str) -> None:
        self.helo = argument
        self.session.helo.append(argument)
        self._reset()
        self.reply("250 " + self.sink.name)

    def smtp_STARTTLS(self, argument: str) -> bool:
        if self.session.tls or self.sink.context_factory is None:
            raise _Reply("503 5.5.1 TLS not available")
        if argument:
            raise _Reply("501 5.5.4 Syntax: STARTTLS")
        if self.buffer:
            # RFC 3207 s5: nothing may be pipelined after STARTTLS.
            raise _Reply("554 5.5.1 Data after STARTTLS")
        self.session.starttls = True
        self.reply("220 2.0.0 Ready to start TLS")
        context = self.sink.context_factory(self.session)
        try:
            tls = context.wrap_socket(self.sock, server_side=True)
        except (ssl.SSLError, OSError) as e:
            self.session.tls_error = str(e)
            return True
        self.sock = tls
        self.sink.switched(self.session, tls)
        self.session.tls = True
        self.session.tls_version = tls.version()
        # RFC 3207 s4.2: the client starts over with EHLO.
        self.helo = ""
        self._reset()
        return False

    def smtp_MAIL(self, argument: str) -> None:
        if not self.helo:
            raise _Reply("503 5.5.1 EHLO first")
        if self.mail_from is not None:
            raise _Reply("503 5.5.1 Nested MAIL command")
        if not argument.upper().startswith("FROM:"):
            raise _Reply("501 5.5.4 Syntax: MAIL FROM:<address>")
        self.mail_from = _path(argument[5:])
        self.reply("250 2.1.0 Ok")

    def smtp_RCPT(self, argument: str) -> None:
        if self.mail_from is None:
            raise _Reply("503 5.5.1 MAIL first")
        if not argument.upper().startswith("TO:"):
            raise _Reply("501 5.5.4 Syntax: RCPT TO:<address>")
        self.rcpt_to.append(_path(argument[3:]))
        self.reply("250 2.1.5 Ok")

    def smtp_DATA(self, argument: str) -> bool | None:
        if self.mail_from is None or not self.rcpt_to:
            raise _Reply("503 5.5.1 RCPT first")
        self.reply("354 End data with <CR><LF>.<CR><LF>")
        lines = []
        while True:
            line = self.readline()
            if line is None:
                return True
            if line in (b".\r\n", b".\n"):
                break
            lines.append(line[1:] if line.startswith(b".") else line)
        message = Message(
            mail_from=self.mail_from,
            rcpt_to=tuple(self.rcpt_to),
            data=b"".join(lines),
            tls=self.session.tls,
            sni=self.session.sni,
            helo=self.helo,
        )
        self.sink.accepted(message)
        self._reset()
        self.reply(f"250 2.0.0 Ok: queued as SINK{len(self.sink.messages)}")
        return None

    def smtp_RSET(self, argument: str) -> None:
        self._reset()
        self.reply("250 2.0.0 Ok")

    def smtp_NOOP(self, argument: str) -> None:
        self.reply("250 2.0.0 Ok")

    def smtp_QUIT(self, argument: str) -> bool:
        self.reply("221 2.0.0 Bye")
        return True


def _path(text: str) -> str:
    """The address inside ``<...>``, ESMTP parameters dropped."""
    text = text.strip()
    if text.startswith("<") and ">" in text:
        return text[1 : text.index(">")]
    return text.split(" ", 1)[0]


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    sink: SmtpSink


class _Handler(socketserver.BaseRequestHandler):
    server: _Server

    def handle(self) -> None:
        sink = self.server.sink
        sock: socket.socket = self.request
        sock.settimeout(sink.timeout)
        session = Session(peer=str(self.client_address[0]))
        with sink.tracked(sock, session):
            connection = _Connection(sink, sock, session)
            with contextlib.suppress(OSError, _Reply, ValueError):
                connection.run()
            with contextlib.suppress(OSError):
                connection.sock.close()


class SmtpSink:
    """
    An SMTP server on ``address``:25 greeting as ``name``; with ``certificate``
    it offers STARTTLS with that certificate (for any SNI), without it no TLS.
    """

    def __init__(
        self,
        address: str,
        name: str,
        certificate: Pair | None,
        *,
        port: int = SMTP_PORT,
        timeout: float = 30.0,
    ) -> None:
        self.address = address
        self.name = name
        self.certificate = certificate
        self.port = port
        self.timeout = timeout
        self.sessions: list[Session] = []
        self.messages: list[Message] = []
        self._lock = threading.Condition()
        # Each open connection's current socket (the TLS one after STARTTLS).
        self._open: dict[int, socket.socket] = {}
        self._threads: set[threading.Thread] = set()
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def context_factory(self) -> Callable[[Session], ssl.SSLContext] | None:
        if self.certificate is None:
            return None
        return self._context

    def _context(self, session: Session) -> ssl.SSLContext:
        """A context per connection, so that its SNI callback knows the session."""
        assert self.certificate is not None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(str(self.certificate.cert), str(self.certificate.key))

        def sni(
            _sock: ssl.SSLObject | ssl.SSLSocket, name: str | None, _ctx: ssl.SSLContext
        ) -> None:
            session.sni = name

        context.sni_callback = sni
        return context

    def start(self) -> SmtpSink:
        try:
            server = _Server((self.address, self.port), _Handler)
        except OSError as e:
            raise bind_error(e, self.address, self.port, f"the SMTP sink {self.name}") from None
        server.sink = self
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"smtp-sink-{self.address}",
            daemon=True,
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening and cut every open connection; the handlers then end."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with self._lock:
            for sock in list(self._open.values()):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
            threads = list(self._threads)
        for thread in threads + ([self._thread] if self._thread else []):
            thread.join(5.0)

    @contextlib.contextmanager
    def tracked(self, sock: socket.socket, session: Session) -> Iterator[None]:
        """Record a connection's session, and its socket for ``stop`` to cut."""
        with self._lock:
            self._open[id(session)] = sock
            self._threads.add(threading.current_thread())
            self.sessions.append(session)
            self._lock.notify_all()
        try:
            yield
        finally:
            with self._lock:
                self._open.pop(id(session), None)
                session.closed = True
                self._lock.notify_all()

    def switched(self, session: Session, sock: socket.socket) -> None:
        """A connection now runs over ``sock`` (STARTTLS replaced the plain one)."""
        with self._lock:
            if id(session) in self._open:
                self._open[id(session)] = sock

    def accepted(self, message: Message) -> None:
        """Record a message the sink answered 250 to."""
        with self._lock:
            self.messages.append(message)
            self._lock.notify_all()

    def wait_for_sessions(self, count: int = 1, timeout: float = 10.0) -> list[Session]:
        """The sessions once ``count`` of them have ended (or all there are at ``timeout``)."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while sum(s.closed for s in self.sessions) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._lock.wait(left)
            return list(self.sessions)

    def __repr__(self) -> str:
        return f"<SmtpSink {self.name} {self.address}:{self.port}>"
