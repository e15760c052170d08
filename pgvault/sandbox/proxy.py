"""A userspace TCP proxy on 127.0.0.1 that can add latency, black-hole traffic or cut
connections: the network between this host and one region, for the lab and the tests.

`tc netem` is not available on this kind of machine (no module), so faults are made here:

- ``latency(seconds)``: every chunk relayed, in either direction, waits that long first (a
  long round trip; throughput stays what the far end gives);
- ``black_hole()``: new connections are accepted and never answered, and bytes on open ones
  are no longer relayed (a firewall that drops packets: callers see timeouts, not refusals);
- ``cut()``: every open connection is reset and new ones are refused until ``heal()`` (a
  link that went down: callers see errors at once);
- ``heal()``: back to a clean relay.

Threads only, daemon ones: the proxy dies with its process and needs no teardown of its own
beyond ``stop()``."""
from __future__ import annotations

import socket
import struct
import threading
import time

CHUNK = 64 * 1024


class Proxy:
    """Relays 127.0.0.1:<port> to ``target`` (host, port), with injectable faults."""

    def __init__(self, target: tuple[str, int], name: str = "proxy"):
        self.target = target
        self.name = name
        self.mode = "clean"       # clean | latency | black-hole | cut
        self.delay = 0.0
        self.accepted = 0
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    # -- faults
    def latency(self, seconds: float) -> None:
        self.delay, self.mode = seconds, "latency"

    def black_hole(self) -> None:
        self.mode = "black-hole"

    def cut(self) -> None:
        self.mode = "cut"
        with self._lock:
            conns = list(self._conns)
        for c in conns:
            _reset(c)

    def heal(self) -> None:
        self.delay, self.mode = 0.0, "clean"

    # -- lifetime
    def start(self) -> "Proxy":
        threading.Thread(target=self._accept, name=f"{self.name}-accept", daemon=True).start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self.cut()
        try:
            self.sock.close()
        except OSError:
            pass

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self.sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.accepted += 1
            if self.mode == "cut":
                _reset(client)
                continue
            if self.mode == "black-hole":
                self._track(client)   # held open, never answered
                continue
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                _reset(client)
                continue
            self._track(client, upstream)
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), name=f"{self.name}-pipe", daemon=True).start()

    def _track(self, *conns: socket.socket) -> None:
        with self._lock:
            self._conns.update(conns)

    def _pipe(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while True:
                data = src.recv(CHUNK)
                if not data:
                    break
                while self.mode == "black-hole" and not self._stop.is_set():
                    time.sleep(0.05)  # traffic is dropped on the floor: the caller waits for its timeout
                if self.mode == "cut":
                    break
                if self.delay:
                    time.sleep(self.delay)
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
            with self._lock:
                self._conns.discard(src)
                self._conns.discard(dst)
            src.close()


def _reset(sock: socket.socket) -> None:
    """Close with RST (SO_LINGER 0), as a dead link's peer sees it, not a polite FIN."""
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
    except OSError:
        pass
