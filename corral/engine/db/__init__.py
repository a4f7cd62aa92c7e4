"""Persistence: SQLAlchemy 2.0 models, engine/session creation, Alembic migrations applied on start."""
