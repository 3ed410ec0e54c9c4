"""Detection quality: metrics (numpy only), alert episodes, and the ``fleetsentry eval`` report."""
