"""Machinery every capability shares: the unit of work, jobs, audit, idempotency, settings,
pagination, monitoring and the vault."""
