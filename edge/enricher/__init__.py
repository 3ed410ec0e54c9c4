"""raw.* -> PII vault + anon.*, exactly once (Kafka transactions, changelog-backed state)."""

from edge.enricher.enricher import Enricher

__all__ = ["Enricher"]
