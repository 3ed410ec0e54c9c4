"""Publishes each stream's champion model to the compacted ``models`` topic."""

from cloud.publisher.publisher import Publisher, PublishError

__all__ = ["PublishError", "Publisher"]
