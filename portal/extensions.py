"""Unbound extension instances, initialised in ``create_app``."""

from __future__ import annotations

from flask_migrate import Migrate
from flask_sqlalchemy import SQLAlchemy

from portal.models import Base

db = SQLAlchemy(metadata=Base.metadata)
migrate = Migrate(directory="migrations")
