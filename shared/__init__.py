"""Code both sides of fleetsentry use: contracts, topics, stream specs, config, provisioning.

Nothing here imports ``edge``, ``cloud`` or ``firmware_sim``.
"""

# The package version (pyproject.toml reads it from here).
__version__ = "0.1.0"
