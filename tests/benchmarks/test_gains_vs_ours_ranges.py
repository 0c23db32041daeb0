"""``benchmarks.gains_vs_ours`` names the images it compares as runs of consecutive indices, so a
cache filled by several GAINS processes (with gaps between their ranges) is not reported as one span."""

from __future__ import annotations

from benchmarks.gains_vs_ours import image_ranges


def test_image_ranges_are_the_runs_of_consecutive_indices() -> None:
    assert image_ranges([8000, 8001, 8002, 8010, 8011, 8020]) == [[8000, 8002], [8010, 8011], [8020, 8020]]
    assert image_ranges([8005]) == [[8005, 8005]]
    assert image_ranges([]) == []
