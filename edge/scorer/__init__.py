"""Edge scoring: int8 autoencoders over anonymized records, alerts and payment decisions.

``Scorer`` is the one interface (``score_batch(matrix) -> (scores, per_feature_errors)``);
``TFLiteScorer`` runs the signed int8 model through LiteRT, ``FloatReferenceScorer`` runs the
float weights in numpy, and a contract test holds both to the same answers.
"""

from edge.scorer.scorers import FloatReferenceScorer, Scorer, TFLiteScorer

__all__ = ["FloatReferenceScorer", "Scorer", "TFLiteScorer"]
