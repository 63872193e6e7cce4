"""The activity feed over a long history: the first page, read one card at a time (a LIMITed
index range per card), is the newest movements of every kind across all the cardholder's cards,
in order, with a transfer between one's own cards shown once (the database flags those,
``transfers.between_own_cards``); the next page continues it."""

from __future__ import annotations

import sqlalchemy as sa

from portal.services.identity import users
from portal.services.shared.uow import UnitOfWork
from portal.services.wallet import activity
from tests.cardholder.conftest import Wallets
from tests.pages.conftest import People


def test_the_first_pages_of_a_long_history_are_its_newest_movements(
    people: People, wallets: Wallets, connection: sa.Connection, uow: UnitOfWork
) -> None:
    me = people.make()
    a = wallets.card(me, balance="100.00", name="A")
    b = wallets.card(me, balance="100.00", name="B")
    stranger = wallets.card(people.make(), balance="100.00")
    x = connection.execute
    # Old own-card transfers (A to B), old top-ups on A, and a stranger's newer history.
    x(sa.text("INSERT INTO transfers (from_card_id, to_card_id, amount_minor, currency, status,"
              " created_by_kind, created_at) SELECT :a, :b, g, 'USD', 'succeeded', 'user',"
              " now() - interval '300 days' + g * interval '1 hour'"
              " FROM generate_series(1, 1500) g"), {"a": a.card_id, "b": b.card_id})  # fmt: skip
    template = x(sa.text("SELECT * FROM top_ups WHERE card_id = :a"), {"a": a.card_id}).mappings()
    columns = [c for c in template.one() if c not in ("id", "public_id", "created_at")]
    listed = ", ".join(columns)
    for card, days in ((a, 400), (stranger, 10)):
        x(sa.text(f"INSERT INTO top_ups ({listed}, created_at) SELECT {listed},"  # noqa: S608
                  f" now() - interval '{days} days' + g * interval '1 minute' FROM top_ups,"
                  " generate_series(1, 1500) g WHERE card_id = :c"),
          {"c": card.card_id})  # fmt: skip
    # The database marks them as between one's own cards (the incoming branch skips them in
    # its index), and a transfer to someone else's card not.
    x(sa.text("INSERT INTO transfers (from_card_id, to_card_id, amount_minor, currency, status,"
              " created_by_kind) VALUES (:a, :s, 5, 'USD', 'failed', 'user')"),
      {"a": a.card_id, "s": stranger.card_id})  # fmt: skip
    flags = x(sa.text("SELECT to_card_id = :b AS own, bool_and(between_own_cards),"
                      " bool_or(between_own_cards) FROM transfers WHERE from_card_id = :a"
                      " GROUP BY 1 ORDER BY 1"),
              {"a": a.card_id, "b": b.card_id}).all()  # fmt: skip
    assert [tuple(f) for f in flags] == [(False, False, False), (True, True, True)]
    x(sa.text("ANALYZE transfers"))
    x(sa.text("ANALYZE top_ups"))
    expected = x(sa.text(
        "SELECT public_id FROM ("
        " SELECT public_id, created_at, 'top_up' AS kind, id FROM top_ups WHERE card_id IN (:a, :b)"
        " UNION ALL SELECT public_id, created_at, 'transfer', id FROM transfers"
        "  WHERE from_card_id IN (:a, :b)"
        " UNION ALL SELECT public_id, created_at, 'transfer', id FROM transfers"
        "  WHERE to_card_id IN (:a, :b) AND from_card_id NOT IN (:a, :b) AND status = 'succeeded'"
        ") f ORDER BY created_at DESC, kind DESC, id DESC LIMIT 40"
    ), {"a": a.card_id, "b": b.card_id}).scalars().all()  # fmt: skip
    actor = users.actor_for(uow, me.id)
    first = activity.list_activity(uow, actor=actor, limit=20)
    second = activity.list_activity(uow, actor=actor, limit=20, starting_after=first.items[-1].id)
    assert [i.id for i in first.items + second.items] == expected
    assert first.has_more and second.has_more
    # The own-card transfers appear once each, as money going out of A.
    transfers = [i for i in first.items + second.items if i.kind == "transfer"]
    assert transfers and all(i.direction == "out" and i.card_public_id == a.public_id
                             for i in transfers)  # fmt: skip
    # One card's page includes what came in from one's own other card.
    on_b = [i for i in activity.list_activity(uow, actor=actor, card_id=b.public_id, limit=5).items
            if i.kind == "transfer"]  # fmt: skip
    assert on_b and all(i.direction == "in" and i.card_public_id == b.public_id for i in on_b)
