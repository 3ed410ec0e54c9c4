"""Simulated vehicles (imported as ``firmware_sim``): telemetry, payments, faults and fraud."""
