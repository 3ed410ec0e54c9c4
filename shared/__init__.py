"""Code both sides of fleetsentry use: contracts, topics, stream specs, config, provisioning.

Nothing here imports ``edge``, ``cloud`` or ``firmware_sim``.
"""

__version__ = "0.1.0"
