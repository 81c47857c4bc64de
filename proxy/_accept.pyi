"""A listening socket's connections accepted in one call, each with its original destination and
first bytes (proxy/_accept.c: accept4, SO_ORIGINAL_DST, recv)."""

Peer = tuple[str, int] | tuple[str, int, int, int]
Accepted = tuple[int, Peer, tuple[str, int] | None, bytes | None]

def accept_batch(
    listen_fd: int, limit: int, read_max: int, original_destination: bool, /
) -> tuple[list[Accepted], int, int]:
    """Up to `limit` (1 to 64) waiting connections of the non-blocking listening socket
    `listen_fd`, accepted without waiting (close-on-exec, left blocking), as
    (connections, stopped_by, skipped).

    Each connection is (fd, peer, destination, first_bytes): the peer as socket.accept() gives
    it; the destination before the gateway's redirect (SO_ORIGINAL_DST) as (ip, port), or None
    when `original_destination` is false or the kernel has none (not redirected: the caller
    closes it; it is not read); the first bytes, up to `read_max` (0 to 65536; 0: not read),
    read with MSG_DONTWAIT: b"" when the connection has already ended (closed, reset, or
    failed), None when nothing has come yet. The caller owns, and must close, every fd.

    `stopped_by` is 0 when the batch ended because no connection was waiting or `limit` was
    reached, else the errno of the accept failure that ended it (EMFILE, ENFILE, ENOBUFS,
    ENOMEM: out of resources, pause; EBADF, EINVAL: not a listening socket). `skipped` counts
    the connections whose accept failed for themselves alone (ECONNABORTED, EPROTO, a pending
    network error, ...): they are gone, and the batch went on. If building the answer fails
    (MemoryError), every connection accepted by the call is closed before it raises."""
