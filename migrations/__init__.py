"""Alembic migrations of the callmood database (run them with ``callmood db upgrade``)."""
