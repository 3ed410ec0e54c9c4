"""The cloud side: store, trainer, registry, publisher and dashboard.

Imports ``shared`` only; never ``edge``.
"""
