from shared.errors import FleetsentryError


class StoreError(FleetsentryError):
    """The store cannot write or read its files, or reach Kafka; the message says what to do."""
