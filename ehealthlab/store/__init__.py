"""The time-series store: one logical schema in two physical forms.

TimescaleDB when the extension is loaded (production), plain PostgreSQL otherwise (local
default, CI). Both forms expose the same tables, views and functions, so every query above
the store is the same SQL; only the DDL in `migrations/*.timescale.sql` and
`migrations/*.plain.sql` differs.
"""
