"""A TCP proxy in front of the test PostgreSQL server that can lose one exchange on
purpose, as a network would: the next query whose text holds given words is either
dropped before the server sees it, or run by the server with its answer thrown away;
then the client's connection is cut. Everything else passes through untouched.

The server and the client are real; only the wire between them misbehaves, which is
what makes "did my commit land?" a real question for the client."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from urllib.parse import urlsplit, urlunsplit

import attrs

_CHUNK = 65536
_READY = b"Z\x00\x00\x00\x05"  # ReadyForQuery, then the transaction status byte


@attrs.define
class Cut:
    """What the proxy does to the next query holding every one of `words`: `landed`
    lets the server run it (it commits) and loses its answer; otherwise the query never
    reaches the server. `done` is set once it has cut a connection."""

    words: tuple[bytes, ...]
    landed: bool
    done: threading.Event = attrs.field(factory=threading.Event)


class Proxy:
    """Listens on 127.0.0.1 (a free port) and forwards to `server` (host, port)."""

    def __init__(self, server: tuple[str, int]) -> None:
        self.server = server
        self.cut: Cut | None = None
        self._lock = threading.Lock()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._muted: set[socket.socket] = set()
        self.refusing = 0  # new connections to cut at once, as an unreachable server
        self._then_refuse = 0
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def url(self, ledger_url: str) -> str:
        """`ledger_url` with its host and port replaced by the proxy's."""
        parts = urlsplit(ledger_url)
        user = parts.netloc.rpartition("@")[0]
        netloc = f"{user}@127.0.0.1:{self.port}" if user else f"127.0.0.1:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def arm(self, *words: str, landed: bool, then_refuse: int = 0) -> Cut:
        """Cut as `Cut` says; `then_refuse`: the connections tried next are cut at once
        too, as a server that cannot be reached for a moment."""
        cut = Cut(tuple(word.encode() for word in words), landed)
        with self._lock:
            self.cut = cut
            self.refusing = 0
        self._then_refuse = then_refuse
        return cut

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        for sock in self._sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            with self._lock:
                refuse, self.refusing = self.refusing > 0, max(0, self.refusing - 1)
            if refuse:
                _shut(client)
                continue
            server = socket.create_connection(self.server)
            self._sockets += [client, server]
            threading.Thread(target=self._upstream, args=(client, server), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client), daemon=True).start()

    def _take(self, data: bytes) -> Cut | None:
        """The armed cut, if this chunk from a client is a query it is for (a simple
        query message is small enough here to arrive in one read)."""
        with self._lock:
            cut = self.cut
            if cut is None or not data.startswith(b"Q") or not all(
                    word in data for word in cut.words):
                return None
            self.cut = None
            return cut

    def _upstream(self, client: socket.socket, server: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := client.recv(_CHUNK):
                cut = self._take(data)
                if cut is None:
                    server.sendall(data)
                    continue
                if cut.landed:
                    # The server runs it to its end; its answer, up to ReadyForQuery,
                    # is read here and never forwarded.
                    self._muted.add(server)
                    server.sendall(data)
                    answer = b""
                    while answer[-6:-1] != _READY:
                        chunk = server.recv(_CHUNK)
                        if not chunk:
                            break
                        answer += chunk
                with self._lock:
                    self.refusing = self._then_refuse
                _shut(client, server)
                cut.done.set()
                return
        _shut(client, server)

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(_CHUNK, socket.MSG_PEEK):
                if source in self._muted:
                    return  # this answer is being lost on purpose
                source.recv(len(data))
                target.sendall(data)
        _shut(source, target)


def _shut(*sockets: socket.socket) -> None:
    for sock in sockets:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        with contextlib.suppress(OSError):
            sock.close()


@contextlib.contextmanager
def proxy_to(ledger_url: str) -> Iterator[Proxy]:
    parts = urlsplit(ledger_url)
    proxy = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    try:
        yield proxy
    finally:
        proxy.close()
