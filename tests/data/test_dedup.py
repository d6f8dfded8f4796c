"""The duplicate finder: only repeated rows are reported, each with the line it repeats."""

from __future__ import annotations

from preftune.data.dedup import DuplicateFinder


def test_duplicates_with_their_first_line() -> None:
    finder = DuplicateFinder()
    n = 20_000
    for i in range(n):
        finder.add(f'{{"row": {i}}}'.encode(), i + 1)
    assert list(finder.duplicates()) == []
    finder.add(b'{"row": 17}', n + 1)
    finder.add(b'{"row": 3}', n + 2)
    finder.add(b'{"row": 17}', n + 3)
    assert list(finder.duplicates()) == [(n + 1, 18), (n + 2, 4), (n + 3, 18)]
