"""Provision the real brokers fleetsentry runs on: Kafka (KRaft) and Mosquitto.

Used by ``fleetsentry infra``, by the test fixtures and by the demo. Kafka is assembled from
Maven Central jars (or ``KAFKA_HOME``); Mosquitto comes from Debian's package.
"""
