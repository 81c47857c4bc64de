"""Alembic revisions (one module per revision)."""
