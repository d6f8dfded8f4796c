"""The duplicate finder: bitmap collisions are only candidates; only repeated rows are reported."""

from __future__ import annotations

from preftune.data.dedup import DuplicateFinder


def test_false_candidates_are_not_duplicates() -> None:
    finder = DuplicateFinder(0)  # the smallest bitmap: 30k distinct rows collide often
    n = 30_000
    for i in range(n):
        finder.add(f'{{"row": {i}}}\n'.encode(), i + 1)
    assert len(finder.candidates) > 1000  # ~n²/(2·bits) collisions
    assert list(finder.duplicates()) == []
    finder.add(b'{"row": 17}\n', n + 1)
    finder.add(b'{"row": 17}\n', n + 2)
    assert list(finder.duplicates()) == [(n + 1, 18), (n + 2, 18)]
