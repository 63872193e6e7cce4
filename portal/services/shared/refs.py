"""How a service is told which object to act on: by public id or by internal id.

The rule, for every service: a parameter that names an object (``card_id``, ``user_id``,
``session_id``, ``withdrawal_id``, ``starting_after``, ...) takes a :data:`Ref`:

- a ``str`` is the object's **public id** (``card_4kT9...``), as a request gave it. Blueprints
  pass nothing else. The service resolves it itself, in the statement it already runs (the
  wallet lock, the card or user load, the cursor look-up), so naming an object by its public id
  costs no extra round trip. A string that does not have the shape of that kind's public id
  names nothing: the service answers as for an unknown object, without a query.
- an ``int`` is the object's **internal id**, for callers inside the system (other services,
  worker jobs, demo data, the ledger). It never comes from a request.

Results carry both (``id`` and ``public_id``), so callers answer requests with the public id and
call other services with either.
"""

from __future__ import annotations

from portal.domain.ids import is_public_id

#: An object named by its public id (``str``, from a request) or its internal id (``int``).
Ref = int | str

MAX_ID = 2**63 - 1  # BIGINT: a larger id would be a database error, not a refusal


def ref_key(kind: str, ref: object) -> tuple[str, int | str] | None:
    """The column and value that find the object ``ref`` names: ``("id", 12)`` or
    ``("public_id", "card_...")``; None when ``ref`` cannot name an object of ``kind`` (a
    string of another shape, an integer outside BIGINT's positive range, anything else)."""
    if isinstance(ref, str):
        return ("public_id", ref) if is_public_id(kind, ref) else None
    if isinstance(ref, int) and not isinstance(ref, bool) and 1 <= ref <= MAX_ID:
        return "id", ref
    return None
