"""Publishes each stream's champion model, as a signed release, to the ``models`` topic."""

from cloud.publisher.publisher import Publisher, PublishError, Releaser

__all__ = ["PublishError", "Publisher", "Releaser"]
