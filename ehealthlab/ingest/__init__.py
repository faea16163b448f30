"""Ingest: readings from the broker into the time-series store (issue 4)."""
