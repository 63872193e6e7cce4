"""Staff console use cases: the overview's figures, the audit trail of a record, and the staff
actions that reach across capabilities (adjustments, archiving in bulk)."""
