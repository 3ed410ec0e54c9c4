"""Model training: anonymized records in, a signed int8 autoencoder per stream out.

``fleetsentry cloud train`` reads records (a Kafka topic, or simulator dry-run files passed
through the shared feature code), fits a dense Keras autoencoder on the records presumed normal,
quantizes it to full-integer int8, checks the quantized model ranks anomalies as well as the
float one, picks the alert threshold on a validation split, and writes a signed model directory.
TensorFlow is imported only when training runs (the ``[cloud]`` extra).
"""
