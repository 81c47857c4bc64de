"""Alembic migrations of the schoolgate schema.

A model change needs a revision: `schoolgate db revision -m MESSAGE` writes one from the
difference (review it). Before the first release the single initial revision is rewritten
instead: `schoolgate db revision --initial -m "initial schema"`.
"""
