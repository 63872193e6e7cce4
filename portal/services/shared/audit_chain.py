"""The audit log's hash chains: verification and anchors.

Every ``audit_events`` row is chained by a database trigger (the ``audit_chain`` migration),
whoever inserts it: the row gets a chain, its position ``seq`` on it (from 1) and ``hash`` =
sha256(previous hash on that chain || UTF-8 of :func:`content`), the first entry of a chain
following 32 zero bytes. Several chains (``audit_chain_heads``, one row each) let concurrent
writers append without waiting for each other: a transaction takes a free head (preferring
``pg_backend_pid() % chains``, ``SKIP LOCKED`` otherwise) and keeps it until it ends.

:func:`verify` walks each chain by ``(chain, seq)`` (rows commit out of id order) and recomputes
every hash here, in Python, from the row's values, trusting neither the trigger nor the stored
hashes; ``jsonb`` and ``inet`` are taken in PostgreSQL's own text form (``data::text``,
``address::text``), their canonical rendering. It names each break: an entry whose content no
longer gives its hash (edited, or forged), missing positions (deleted), an entry past its
chain's head or a second entry at one position (inserted outside the trigger), a head the
chain does not reach, and an anchor whose recorded hash is not on the chain.

:func:`anchor` (a periodic worker task) appends an ``audit.anchor`` entry holding every head's
position and hash. Anchors are what catch a rewrite that recomputed every later hash: the
anchor entries sit on other chains (and in the worker's metrics and log, outside the database).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa

from portal.services.shared.uow import UnitOfWork

VERSION = "portal.audit.v1"
GENESIS = bytes(32)
ANCHOR_ACTION = "audit.anchor"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _field(value: object) -> str:
    if value is None:
        return "-"
    text = str(value)
    return f"{len(text)}:{text}"


def content(
    *,
    id: int,  # noqa: A002 (the column's name)
    chain: int,
    seq: int,
    occurred_at: datetime,
    actor_kind: str,
    actor_id: int | None,
    action: str,
    subject_type: str,
    subject_id: int | None,
    outcome: str,
    address: str | None,
    data: str,
) -> str:
    """The canonical content of an entry, as the database's ``audit_event_content`` writes it:
    ``address`` and ``data`` are PostgreSQL's text of the ``inet`` and the ``jsonb``."""
    micros = (occurred_at - _EPOCH) // _MICROSECOND
    fields = (id, chain, seq, micros, actor_kind, actor_id, action, subject_type, subject_id,
              outcome, address, data)  # fmt: skip
    return "|".join((VERSION, *(_field(f) for f in fields)))


def link(previous: bytes, text: str) -> bytes:
    """An entry's hash: sha256 of the previous entry's hash and the entry's content."""
    return hashlib.sha256(previous + text.encode("utf-8")).digest()


@dataclass(frozen=True, slots=True)
class Break:
    """Where a chain breaks: the entry (``entry_id``, None when the entries are missing) at
    ``chain``/``seq`` and what is wrong."""

    kind: str  # edited | deleted | inserted | head | anchor | unchained
    chain: int | None
    seq: int | None
    entry_id: int | None
    message: str


@dataclass(frozen=True, slots=True)
class ChainState:
    chain: int
    seq: int
    hash: str  # hex


@dataclass(frozen=True, slots=True)
class AuditReport:
    entries: int
    chains: tuple[ChainState, ...]
    anchors: int
    breaks: tuple[Break, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.breaks


#: One chain's rows: its head (``kind`` "h", first) and its entries by seq, read in one
#: statement so that both come from one snapshot. Each chain is read in a transaction of its
#: own, so no snapshot is held for the whole log (a long one would keep the heads' old row
#: versions from being pruned).
_CHAIN = """
SELECT 'h' AS kind, h.chain, h.seq, NULL::bigint AS id, NULL::timestamptz AS occurred_at,
       NULL AS actor_kind, NULL::bigint AS actor_id, NULL AS action, NULL AS subject_type,
       NULL::bigint AS subject_id, NULL AS outcome, NULL AS address, NULL AS data, h.hash
FROM audit_chain_heads h WHERE h.chain = :chain
UNION ALL
SELECT 'e', e.chain, e.seq, e.id, e.occurred_at, e.actor_kind, e.actor_id, e.action,
       e.subject_type, e.subject_id, e.outcome, e.address::text, e.data::text, e.hash
FROM audit_events e WHERE e.chain = :chain
ORDER BY kind DESC, seq, id
"""
#: Every chain with a head or an entry (a skip scan of the (chain, seq) index), and the
#: entries on no chain at all (possible only if the NOT NULL constraint was dropped).
_CHAINS = """
WITH RECURSIVE used AS (
    SELECT min(chain) AS chain FROM audit_events
    UNION ALL
    SELECT (SELECT min(e.chain) FROM audit_events e WHERE e.chain > used.chain) FROM used
    WHERE used.chain IS NOT NULL
)
SELECT chain FROM used WHERE chain IS NOT NULL UNION SELECT chain FROM audit_chain_heads
ORDER BY chain
"""
_UNCHAINED = "SELECT 'e' AS kind, NULL AS chain, id FROM audit_events WHERE chain IS NULL"

_ANCHORS = "SELECT id, data FROM audit_events WHERE action = :action ORDER BY id"


def _anchor_claims(data: Any) -> dict[int, tuple[int, str]]:
    """``{chain: (seq, hex hash)}`` of an anchor entry's data (empty if malformed)."""
    chains = data.get("chains") if isinstance(data, dict) else None
    claims: dict[int, tuple[int, str]] = {}
    if isinstance(chains, dict):
        for chain, value in chains.items():
            if isinstance(value, dict) and str(chain).isdigit():
                try:
                    claims[int(chain)] = (int(value.get("seq", -1)), str(value.get("hash", "")))
                except (TypeError, ValueError):
                    continue
    return claims


def _missing(first: int, last: int) -> str:
    if first == last:
        return f"the entry at seq {first} is missing"
    return f"entries seq {first}..{last} ({last - first + 1}) are missing"


class _Walk:
    """The state of the walk along one chain at a time."""

    def __init__(self, anchors: Iterable[tuple[int, dict[int, tuple[int, str]]]]) -> None:
        #: chain -> seq -> [(anchor entry id, hex hash)] the walk must meet
        self.wanted: dict[int, dict[int, list[tuple[int, str]]]] = {}
        self.anchors = 0
        for anchor_id, claims in anchors:
            self.anchors += 1
            for chain, (seq, digest) in claims.items():
                if seq > 0:
                    self.wanted.setdefault(chain, {}).setdefault(seq, []).append(
                        (anchor_id, digest)
                    )
        self.breaks: list[Break] = []
        self.states: list[ChainState] = []
        self.entries = 0
        self.chain: int | None = None
        self.head: tuple[int, bytes] | None = None
        self.seq = 0
        self.previous = GENESIS
        self.last_id: int | None = None

    def broken(self, kind: str, seq: int | None, entry_id: int | None, message: str) -> None:
        self.breaks.append(Break(kind, self.chain, seq, entry_id, f"chain {self.chain}: {message}"))

    def start(self, chain: int, head: tuple[int, bytes] | None) -> None:
        self.end()
        self.chain, self.head = chain, head
        self.seq, self.previous, self.last_id = 0, GENESIS, None
        if head is not None:
            self.states.append(ChainState(chain, head[0], head[1].hex()))

    def end(self) -> None:
        """The chain's last entry against its head (once)."""
        if self.chain is None or self.head is None:
            return
        done, self.head = self.head, None
        head_seq, head_hash = done
        if head_seq > self.seq:
            after = f"after entry {self.last_id}" if self.last_id is not None else "from its start"
            self.broken("deleted", self.seq + 1, None,
                        f"{_missing(self.seq + 1, head_seq)} at its end"
                        f" ({after}; its head is at seq {head_seq}): deleted")  # fmt: skip
        elif head_seq == self.seq and head_hash != self.previous:
            self.broken("head", self.seq, self.last_id,
                        f"its last entry {self.last_id} (seq {self.seq}) does not match the"
                        " chain's head")  # fmt: skip

    def entry(self, row: Any) -> None:
        self.entries += 1
        stored = bytes(row.hash)
        if self.head is None:
            self.broken("inserted", row.seq, row.id,
                        f"entry {row.id} (seq {row.seq}) is on a chain that has no head:"
                        " inserted outside the trigger")  # fmt: skip
        elif row.seq > self.head[0]:
            self.broken("inserted", row.seq, row.id,
                        f"entry {row.id} (seq {row.seq}) is past the chain's head (seq"
                        f" {self.head[0]}): inserted outside the trigger")  # fmt: skip
        if row.seq == self.seq and self.last_id is not None:
            self.broken("inserted", row.seq, row.id,
                        f"entry {row.id} has the position of entry {self.last_id} (seq"
                        f" {row.seq}): inserted")  # fmt: skip
            return
        text = content(
            id=row.id, chain=row.chain, seq=row.seq, occurred_at=row.occurred_at,
            actor_kind=row.actor_kind, actor_id=row.actor_id, action=row.action,
            subject_type=row.subject_type, subject_id=row.subject_id, outcome=row.outcome,
            address=row.address, data=row.data,
        )  # fmt: skip
        if row.seq > self.seq + 1:
            self.broken("deleted", self.seq + 1, row.id,
                        f"{_missing(self.seq + 1, row.seq - 1)} before entry"
                        f" {row.id} (seq {row.seq}): deleted")  # fmt: skip
        elif link(self.previous, text) != stored:
            after = f"entry {self.last_id}" if self.last_id is not None else "the chain's start"
            self.broken("edited", row.seq, row.id,
                        f"entry {row.id} (seq {row.seq}) does not follow from {after} and its"
                        f" own content: entry {row.id} was edited or forged (or the stored hash"
                        f" of {after} was changed)")  # fmt: skip
        # Go on from the stored hash, so that each later break is named on its own.
        self.seq, self.previous, self.last_id = row.seq, stored, row.id
        for anchor_id, digest in self.wanted.get(row.chain, {}).pop(row.seq, ()):
            if stored.hex() != digest:
                self.broken("anchor", row.seq, row.id,
                            f"anchor entry {anchor_id} recorded seq {row.seq} as {digest[:16]}…,"
                            f" entry {row.id} there hashes to {stored.hex()[:16]}…: the chain"
                            " was rewritten after that anchor")  # fmt: skip

    def feed(self, row: Any) -> None:
        if row.chain is None:
            self.entries += 1
            self.breaks.append(Break("unchained", None, None, row.id,
                                     f"entry {row.id} is on no chain: inserted outside the"
                                     " trigger"))  # fmt: skip
        elif row.kind == "h":
            self.start(row.chain, (int(row.seq), bytes(row.hash)))
        else:
            if row.chain != self.chain:
                self.start(row.chain, None)
            self.entry(row)

    def mark(self, chain: int | None) -> tuple[Any, ...]:
        """What to go back to if reading ``chain`` has to start again."""
        wanted = dict(self.wanted.get(chain, {})) if chain is not None else {}
        return (chain, self.entries, len(self.breaks), len(self.states), wanted)

    def restore(self, mark: tuple[Any, ...]) -> None:
        chain, self.entries, breaks, states, wanted = mark
        del self.breaks[breaks:], self.states[states:]
        if chain is not None and (wanted or chain in self.wanted):
            self.wanted[chain] = dict(wanted)
        self.chain, self.head = None, None

    def report(self) -> AuditReport:
        self.end()
        self.chain = None
        for chain, positions in sorted(self.wanted.items()):
            self.chain = chain
            for seq, claimed in sorted(positions.items()):
                for anchor_id, _digest in claimed:
                    self.broken("anchor", seq, anchor_id,
                                f"anchor entry {anchor_id} recorded seq {seq}, which the chain"
                                " no longer has")  # fmt: skip
        return AuditReport(self.entries, tuple(self.states), self.anchors, tuple(self.breaks))


def walk(
    rows: Iterable[Any], anchors: Iterable[tuple[int, dict[int, tuple[int, str]]]] = ()
) -> AuditReport:
    """Check rows of :data:`_CHAIN` (chain after chain: its head, then its entries by seq)
    and the anchors' claims ``(anchor entry id, {chain: (seq, hex hash)})``."""
    state = _Walk(anchors)
    for row in rows:
        state.feed(row)
    return state.report()


def verify(uow: UnitOfWork) -> AuditReport:
    """Walk every chain, each in a transaction of its own, and check every anchor (see the
    module docstring). Raises nothing; the report's ``breaks`` name what is wrong."""
    anchors = uow.run(
        lambda u: [
            (row.id, _anchor_claims(row.data))
            for row in u.execute(_ANCHORS, {"action": ANCHOR_ACTION})
        ]
    )
    state = _Walk(anchors)
    chains = uow.run(lambda u: [row.chain for row in u.execute(_CHAINS)])
    for chain in (None, *chains):
        mark = state.mark(chain)

        def work(u: UnitOfWork, chain: int | None = chain, mark: Any = mark) -> None:
            state.restore(mark)  # a retried read starts the chain again
            if chain is None:
                rows = u.execute(_UNCHAINED)
            else:
                statement = sa.text(_CHAIN).execution_options(yield_per=5000)
                rows = u.session.execute(statement, {"chain": chain})
            for row in rows:
                state.feed(row)
            state.end()
            state.chain = None

        uow.run(work)
    return state.report()


@dataclass(frozen=True, slots=True)
class Anchor:
    """The heads an anchor recorded; ``entry_id`` is None when nothing had changed since the
    last anchor (none was written)."""

    entry_id: int | None
    at: datetime
    heads: tuple[ChainState, ...]


_HEADS = "SELECT chain, seq, hash FROM audit_chain_heads ORDER BY chain"
_LAST_ANCHOR = (
    "SELECT id, chain, seq, data FROM audit_events WHERE action = :action ORDER BY id DESC LIMIT 1"
)
_WRITE_ANCHOR = """
INSERT INTO audit_events (occurred_at, actor_kind, actor_id, action, subject_type, subject_id,
                          outcome, data)
SELECT :now, 'system', NULL, :action, 'audit_chain', NULL, 'success',
       jsonb_build_object('chains', jsonb_object_agg(chain::text,
           jsonb_build_object('seq', seq, 'hash', encode(hash, 'hex'))))
FROM audit_chain_heads
RETURNING id, data
"""


def anchor(uow: UnitOfWork) -> Anchor:
    """Append an ``audit.anchor`` entry recording every chain head (seq and hash), unless no
    entry was added since the last anchor but that anchor itself. Raises nothing of its own."""

    def work(u: UnitOfWork) -> Anchor:
        heads = [ChainState(r.chain, r.seq, bytes(r.hash).hex()) for r in u.execute(_HEADS)]
        last = u.execute(_LAST_ANCHOR, {"action": ANCHOR_ACTION}).first()
        if last is not None:
            claims = _anchor_claims(last.data)
            # Since the last anchor, only its own chain moved, by one: the anchor itself.
            moved = {h.chain: h.seq - claims.get(h.chain, (0, ""))[0] for h in heads}
            if all(n == (1 if c == last.chain and last.seq == claims.get(c, (0, ""))[0] + 1
                         else 0) for c, n in moved.items()):  # fmt: skip
                return Anchor(None, u.now(), tuple(heads))
        row = u.execute(_WRITE_ANCHOR, {"now": u.now(), "action": ANCHOR_ACTION}).one()
        claims = _anchor_claims(row.data)
        recorded = tuple(ChainState(c, s, h) for c, (s, h) in sorted(claims.items()))
        return Anchor(int(row.id), u.now(), recorded)

    return uow.run(work)


def describe(report: AuditReport) -> Iterator[str]:
    """The lines ``portal audit verify`` prints."""
    yield (f"checked {report.entries} audit entries on {len(report.chains)} chains,"
           f" {report.anchors} anchor(s)")  # fmt: skip
    for state in report.chains:
        if state.seq:
            yield f"  chain {state.chain}: seq {state.seq}, head {state.hash[:16]}…"
    for b in report.breaks:
        where = f"chain {b.chain} seq {b.seq}" if b.chain is not None else "no chain"
        entry = f" entry {b.entry_id}" if b.entry_id is not None else ""
        yield f"BROKEN ({b.kind}) at {where}{entry}: {b.message}"
