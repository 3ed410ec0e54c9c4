"""The signer: the cloud process that holds the model-signing key, trains, and carries out the
requests operators record on the dashboard (see :mod:`cloud.signer.signer`)."""
