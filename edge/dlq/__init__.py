"""Dead letters (``dlq.ingest``): rejected input, kept without personal data in the clear."""

from edge.dlq.errors import DeadLetterError
from edge.dlq.letters import DeadLetters, scrub

__all__ = ["DeadLetterError", "DeadLetters", "scrub"]
