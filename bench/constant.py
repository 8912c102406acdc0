#!/usr/bin/python3
"""
The framework's limit: Twisted socketmap servers that do no work at all,
answering every request with the same bytes as a cached mxpolicyd answer.
What mxpolicyd loses against them is its own per-lookup cost.

    constant.py netstring|protocol REPLY   # listens on 127.0.0.1, prints "port N"

``netstring`` is twisted.protocols.basic.NetstringReceiver; ``protocol`` a
bare Protocol that finds netstrings by hand.
"""

from __future__ import annotations

import sys

from twisted.internet import protocol, reactor
from twisted.protocols.basic import NetstringReceiver


def main() -> None:
    kind, text = sys.argv[1], sys.argv[2].encode()
    reply = b"%d:%s," % (len(text), text)

    class Netstring(NetstringReceiver):
        def stringReceived(self, string: bytes) -> None:
            self.transport.write(reply)

    class Bare(protocol.Protocol):
        buffer = b""

        def dataReceived(self, data: bytes) -> None:
            buf = self.buffer + data
            while True:
                colon = buf.find(b":")
                if colon < 0:
                    break
                end = colon + 1 + int(buf[:colon])
                if len(buf) <= end:
                    break
                buf = buf[end + 1:]
                self.transport.write(reply)
            self.buffer = buf

    f = protocol.Factory.forProtocol(Netstring if kind == "netstring" else Bare)
    f.noisy = False
    port = reactor.listenTCP(0, f, interface="127.0.0.1")  # type: ignore[attr-defined]
    print("port %d" % port.getHost().port, flush=True)
    reactor.run()  # type: ignore[attr-defined]


if __name__ == "__main__":
    main()
