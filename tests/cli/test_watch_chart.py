"""The terminal chart of `preftune fine-tuning watch`: a sparkline per metric."""

from __future__ import annotations

from preftune.cli.fine_tuning import SPARK, sparkline


def test_sparkline_follows_the_values_and_fits_its_width() -> None:
    assert sparkline([]) == ""
    rising = sparkline([0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0])
    assert rising == SPARK  # one column per value, lowest to highest
    falling = sparkline([float(v) for v in range(200, 0, -1)], width=20)
    assert len(falling) == 20 and falling[0] == SPARK[-1] and falling[-1] == SPARK[0]
    assert list(falling) == sorted(falling, reverse=True)
    assert sparkline([0.5, 0.5, float("nan")]) == SPARK[0] * 2  # flat; NaN is skipped
