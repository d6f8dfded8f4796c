"""Find duplicate rows among millions, fast and in little memory.

Each row's 64-bit hash is appended to an array in file order (with its line number) and to one of
16 partition arrays chosen by its low bits: two appends a row, no per-row lookups. At the end
each partition (1/16 of the rows) is turned into a set in C; only a partition whose set is smaller
than itself holds duplicates, and only then are its repeated hashes matched back to their lines.
For 3M rows this holds about 60 MB (arrays of machine integers) plus one partition's set at a time,
where one Python set of every hash would take over 200 MB.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable, Iterator

N_PARTS = 16  # a power of two: the partition is `hash & (N_PARTS - 1)`


class DuplicateFinder:
    def __init__(self) -> None:
        self.hashes = array("q")
        self.lines = array("L")
        self.parts = [array("q") for _ in range(N_PARTS)]
        # Bound methods, looked up once: `add` runs once per row of multi-million-row files.
        self.part_appends: list[Callable[[int], None]] = [part.append for part in self.parts]

    def add(self, key: bytes, line: int) -> None:
        """Note a row (its bytes) found on `line`. `validate_file` inlines exactly this."""
        h = hash(key)
        self.hashes.append(h)
        self.lines.append(line)
        self.part_appends[h & (N_PARTS - 1)](h)

    def duplicates(self) -> Iterator[tuple[int, int]]:
        """(line, line of its first occurrence) for every repeated row, in file order."""
        repeated: set[int] = set()
        for part in self.parts:
            if len(set(part)) != len(part):
                repeated.update(h for h, count in Counter(part).items() if count > 1)
        if not repeated:
            return
        first: dict[int, int] = {}
        for h, line in zip(self.hashes, self.lines, strict=True):
            if h in repeated:
                if h in first:
                    yield line, first[h]
                else:
                    first[h] = line
