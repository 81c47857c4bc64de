"""A seeded mutator of DNS messages for the fuzz tests: bit flips, overwrites, truncation,
splices, inflated counts, compression pointers where labels should be, and pure noise."""

from __future__ import annotations

import random
import struct


class Mutator:
    def __init__(self, corpus: list[bytes], seed: int) -> None:
        self.corpus = corpus
        self.rng = random.Random(seed)

    def packet(self) -> bytes:
        rng = self.rng
        choice = rng.random()
        if choice < 0.08:
            return rng.randbytes(rng.randint(0, 600))
        if choice < 0.12:
            return rng.randbytes(rng.randint(0, 11))  # not even a header
        data = bytearray(rng.choice(self.corpus))
        for _ in range(rng.randint(1, 4)):
            self._mutate(data)
        return bytes(data[:4096])

    def _mutate(self, data: bytearray) -> None:
        rng = self.rng
        if not data:
            data.extend(rng.randbytes(12))
            return
        kind = rng.randrange(9)
        position = rng.randrange(len(data))
        if kind == 0:
            data[position] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[position] = rng.randrange(256)
        elif kind == 2:
            del data[rng.randrange(len(data)) :]
        elif kind == 3:
            data[position:position] = rng.randbytes(rng.randint(1, 40))
        elif kind == 4 and len(data) >= 12:
            # counts: QD, AN, NS, AR
            field = 4 + 2 * rng.randrange(4)
            data[field : field + 2] = struct.pack("!H", rng.choice([0, 1, 2, 3, 255, 65535]))
        elif kind == 5 and len(data) >= 4:
            data[2:4] = struct.pack("!H", rng.randrange(65536))  # flags, opcode, rcode
        elif kind == 6:
            # a compression pointer where a label should be
            data[position : position + 2] = bytes([0xC0 | rng.randrange(64), rng.randrange(256)])
        elif kind == 7:
            start = rng.randrange(len(data))
            data.extend(data[start : start + rng.randint(1, 60)])
        else:
            data[position] = rng.choice([0, 63, 64, 0x3F, 0x40, 0x80, 0xFF])

    def answer(self, data: bytes, keep: int) -> bytes:
        """A mutated copy of an answer that still carries its first `keep` bytes (the ID and
        the question), so that it passes the resolver's checks and reaches its parsers."""
        rng = self.rng
        head = bytearray(data[:keep])
        tail = bytearray(data[keep:])
        for _ in range(rng.randint(1, 4)):
            self._mutate(tail)
        if len(head) >= 12 and rng.random() < 0.3:
            # counts and flags too (the ID and QR stay, or the answer would never be taken)
            field = 4 + 2 * rng.randrange(4)
            head[field : field + 2] = struct.pack("!H", rng.choice([0, 1, 2, 3, 255, 65535]))
            if rng.random() < 0.3:
                head[3] = rng.randrange(256)  # RA, Z, AD, CD and the RCODE
        return bytes(head + tail)[:65535]
