"""schoolgate.store: the database every daemon shares.

- ``models``: the schema (SQLAlchemy 2 typed models); ``migrations``: its alembic history.
- ``db``: engines for any SQLAlchemy URL (SQLite tuned for several writing processes),
  sessions, ``init_db`` (upgrade to the newest schema).
- ``events``: the batched, bounded event writer and the allowed-traffic aggregator; every
  event carries a uid made at the source, so it is stored once however often it is sent.
- ``spool``: the on-disk spool of a trust appliance whose central database is away
  (``events.make_event_writer`` sets it up; its shipper empties it when the database is back).
- ``audit``: the append-only, hash-chained audit log.
- ``overlay``: exceptions, bans and site blocks as policy values; change counters.
"""
