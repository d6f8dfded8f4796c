"""Find duplicate rows among millions in little memory.

Each row's 64-bit hash goes into an array (8 bytes a row) and sets one bit in a bitmap; a hash
whose bit is already set is a *candidate*. At the end one pass over the array confirms the
candidates (same full hash) and pairs each duplicate with the first line holding it. For 3M rows
this costs about 50 MB, where a Python set of the hashes would cost over 200 MB.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator

MIN_BITS = 1 << 16
MAX_BITS = 1 << 27  # 16 MiB of bitmap


class DuplicateFinder:
    def __init__(self, size_hint_bytes: int = 0) -> None:
        # About one row per 64 bytes at most, and 8 bits per row keeps false candidates rare.
        bits = MIN_BITS
        while bits < min(size_hint_bytes, MAX_BITS):
            bits <<= 1
        self.mask = bits - 1
        self.bitmap = bytearray(bits >> 3)
        self.hashes = array("q")
        self.lines = array("L")
        self.candidates: set[int] = set()

    def add(self, key: bytes, line: int) -> None:
        h = hash(key)
        self.hashes.append(h)
        self.lines.append(line)
        i = h & self.mask
        bit = 1 << (i & 7)
        if self.bitmap[i >> 3] & bit:
            self.candidates.add(h)
        else:
            self.bitmap[i >> 3] |= bit

    def duplicates(self) -> Iterator[tuple[int, int]]:
        """(line, line of its first occurrence) for every repeated row, in file order."""
        if not self.candidates:
            return
        first: dict[int, int] = {}
        candidates = self.candidates
        for h, line in zip(self.hashes, self.lines, strict=True):
            if h in candidates:
                if h in first:
                    yield line, first[h]
                else:
                    first[h] = line
