"""The edge gateway: bridge, vault, enricher, scorer, agent and their supervisor.

Imports ``shared`` only; never ``cloud``.
"""
