"""Use cases. The only layer that commits (through the unit of work). No Flask here."""
