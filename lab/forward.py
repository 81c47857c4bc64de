"""A TCP port on the host that leads into a lab namespace (the console, from the host's browser).

The lab's namespaces are not routed from the host, and adding a route or an address to the
host's own network would change more than a lab should. Instead a listening socket on the
host's loopback accepts a connection and opens its partner from a thread that has entered
the gateway's namespace (a socket keeps the namespace it was made in), then copies bytes
both ways.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading

from schoolgate.lab import netns

log = logging.getLogger(__name__)
CHUNK = 65536


class PortForward:
    """127.0.0.1:<listen_port> on the host -> <host>:<port> inside `namespace`."""

    def __init__(self, namespace: str, host: str, port: int, *, listen_host: str = "127.0.0.1",
                 listen_port: int = 0) -> None:
        self.namespace = namespace
        self.target = (host, port)
        self._server = socket.create_server((listen_host, listen_port), reuse_port=False)
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._accept_loop, name="lab-forward", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.getsockname()[:2]
        return str(host), int(port)

    def start(self) -> PortForward:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(OSError):
            self._server.shutdown(socket.SHUT_RDWR)
        self._server.close()
        self._thread.join(timeout=5)

    def _accept_loop(self) -> None:
        while not self._stopping.is_set():
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(client,), name="lab-forward-conn", daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        try:
            upstream = netns.call_in(
                self.namespace, lambda: socket.create_connection(self.target, timeout=5), timeout=10
            )
        except (OSError, TimeoutError) as err:
            log.warning("forward to %s:%d in %s: %s", *self.target, self.namespace, err)
            client.close()
            return
        upstream.settimeout(None)
        back = threading.Thread(target=_pump, args=(upstream, client), daemon=True)
        back.start()
        _pump(client, upstream)
        back.join()
        client.close()
        upstream.close()


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy until `source` ends, then pass the end on (half-close), so HTTP keep-alive works."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        sink.shutdown(socket.SHUT_WR)
