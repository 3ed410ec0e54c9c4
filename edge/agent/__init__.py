"""The edge model agent: takes signed models from ``cloud.models`` into service safely.

Verify (signature, stream, feature spec) -> shadow-score on the recent window beside the
running model -> flip the scorer's active model -> watch the live alert rate and roll back by
itself if it jumps. Every step is reported on ``model-status``.
"""
