"""Records of raw.* that retention deleted before the enricher read them, counted.

raw.* is bounded by bytes as well as time (the disk plan, ``edge/disk.py``). An enricher that
falls further behind than a partition keeps finds its next record gone: the consumer jumps to
the partition's new start (``auto.offset.reset``) and those records never reach anon.*. The
bridge writes raw.* without transactions, so its offsets have no holes of their own: a jump
between the last committed or consumed offset and the next record is exactly what was lost.
"""

from __future__ import annotations

Partition = tuple[str, int]


class OffsetGaps:
    """The next offset expected per partition; a record past it tells how many were skipped."""

    def __init__(self) -> None:
        self._next: dict[Partition, int] = {}

    def __contains__(self, tp: Partition) -> bool:
        return tp in self._next

    def expect(self, tp: Partition, offset: int) -> None:
        """Where reading resumes (the group's committed offset)."""
        self._next[tp] = offset

    def observe(self, tp: Partition, offset: int) -> int:
        """Records skipped before ``offset`` (0 when it is the one expected, or unknown)."""
        expected = self._next.get(tp, offset)
        self._next[tp] = offset + 1
        return max(0, offset - expected)

    def reset(self) -> None:
        """After a rebalance or a rewind: expectations are read again from the commits."""
        self._next.clear()
