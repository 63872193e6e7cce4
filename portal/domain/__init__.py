"""Pure domain types: money, errors, actors and frozen results. No I/O, no Flask."""
