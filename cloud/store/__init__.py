"""The cloud's training data: every gateway's replicated topics as partitioned Parquet.

:class:`~cloud.store.writer.Store` consumes ``<edge_id>.anon.*``, ``<edge_id>.scores.*``,
``<edge_id>.alerts``, ``<edge_id>.model-status`` and ``labels`` into
``<root>/<dataset>/day=YYYY-MM-DD/*.parquet``, one row per record id, and commits its
Kafka offsets only after the files are durably written. :class:`~cloud.store.reader.StoreReader`
reads it back with pyarrow datasets (training, dashboard).
"""
