"""The dashboard's routes, one module per part of it; each lists its routes in ``routes``."""
