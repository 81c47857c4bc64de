"""schoolgate.store: the database every daemon shares.

- ``models``: the schema (SQLAlchemy 2 typed models); ``migrations``: its alembic history.
- ``db``: engines for any SQLAlchemy URL (SQLite tuned for several writing processes),
  sessions, ``init_db`` (upgrade to the newest schema).
- ``events``: the batched, bounded event writer and the allowed-traffic aggregator.
- ``audit``: the append-only, hash-chained audit log.
- ``overlay``: exceptions, bans and site blocks as policy values; change counters.
"""
