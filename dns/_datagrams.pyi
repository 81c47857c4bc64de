"""A UDP socket's datagrams received and sent in batches (dns/_datagrams.c: recvmmsg, sendmmsg)."""

def receive(fd: int, count: int, /) -> list[tuple[bytes, str, bytes]]:
    """Up to `count` (1 to 64) waiting datagrams, without waiting ([] when none waits), each as
    (the datagram, the sender's address as the policy spells it, the sender's socket address
    as the kernel gave it, for `send`). OSError for a failing socket."""

def send(fd: int, replies: list[tuple[bytes, bytes]], /) -> tuple[int, int]:
    """Send each (answer, sender) without waiting; (sent, failed). When the socket's buffer is
    full the rest are not sent (the clients ask again); an answer the kernel refuses alone is
    counted failed and the others are still sent."""
