"""The double-entry ledger's primitives and its reconciliation."""
