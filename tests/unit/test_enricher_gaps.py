"""Counting raw records that retention deleted before they were read."""

from edge.enricher.gaps import OffsetGaps

TP = ("raw.telemetry", 1)


def test_a_jump_past_the_committed_offset_is_what_was_lost() -> None:
    gaps = OffsetGaps()
    assert TP not in gaps
    gaps.expect(TP, 100)  # committed: read on from 100
    assert gaps.observe(TP, 100) == 0
    assert gaps.observe(TP, 101) == 0
    assert gaps.observe(TP, 150) == 48  # 102..149 were deleted
    assert gaps.observe(TP, 151) == 0


def test_without_a_commit_or_after_a_rebalance_nothing_is_guessed() -> None:
    gaps = OffsetGaps()
    assert gaps.observe(TP, 5000) == 0  # a fresh group starts wherever the log starts
    gaps.reset()
    assert TP not in gaps
    assert gaps.observe(TP, 9000) == 0
    assert gaps.observe(TP, 8000) == 0  # a rewind is no loss
