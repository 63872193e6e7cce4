"""Statistics from the roll-ups equal the figures computed here from the movements' rows, for
every family, scope and view, before and right after a new movement and a status change; bad
years and months are refused naming the field; each persona sees only its own figures."""

from __future__ import annotations

import pytest

from portal.domain.errors import Forbidden, InvalidInput, NotFound
from portal.services.merchants import payments
from portal.services.statistics import rollups as stats
from portal.services.wallet import wallet
from tests.conftest import SYSTEM, new_key
from tests.statistics.conftest import (
    Cell,
    Dataset,
    at,
    build,
    cells,
    grouped,
    monthly,
    pay,
    select,
    usd,
)

YEARS = (2025, 2026)


@pytest.fixture
def data(uow, make, clock) -> Dataset:
    return build(uow, make, clock)


def ids(uow, data: Dataset) -> dict[str, tuple[str, int, str]]:
    """Scopes to check: name -> (scope, internal id, public id)."""

    def one(sql: str, **p):
        return uow.run(lambda u: u.execute(sql, p).one())

    out = {}
    for name, card in (("a1", data.a1), ("a2", data.a2), ("b1", data.b1)):
        r = one("SELECT id, public_id FROM cards WHERE id = :i", i=card.card_id)
        out[name] = ("card", r.id, r.public_id)
    for name, shop in (("shop", data.shop), ("other", data.other)):
        out[name] = ("merchant", shop.merchant.id, shop.merchant.public_id)
        k = one("SELECT id, public_id FROM api_keys WHERE id = :i", i=shop.key.id)
        out[name + "_key"] = ("api_key", k.id, k.public_id)
    return out


def as_lists(figures: stats.Figures) -> dict[str, list[tuple[int, int]]]:
    return {s.currency: [(p.amount, p.count) for p in s.points] for s in figures.series}


def check_everything(uow, data: Dataset) -> int:
    """Compare every family x scope x status x view; returns how many comparisons were made."""
    found = cells(uow)
    scopes = [("system", 0, None)] + list(ids(uow, data).values())
    compared = 0
    for family in stats.FAMILIES:
        for scope, internal, public in scopes:
            if scope not in stats.SCOPES[family]:
                continue
            sides = [None, "received"] if family == "transfers" and scope == "card" else [None]
            for side in sides:
                kind = "card_received" if side == "received" else scope
                for status in (*stats.STATUSES[family], "all"):
                    if family == "balances" and status != "succeeded":
                        continue
                    mine = select(found, family, kind, internal, status=status)
                    for year in YEARS:
                        for period, expect in (("monthly", monthly), ("yearly", _yearly)):
                            got = stats.figures(
                                uow, actor=data.staff, family=family, period=period, year=year,
                                scope=scope, id=public, status=status, side=side,
                            )  # fmt: skip
                            want = expect(mine, year, balance=family == "balances")
                            assert as_lists(got) == want, (
                                family,
                                scope,
                                side,
                                status,
                                year,
                                period,
                            )
                            compared += 1
                        if family != "balances":
                            for month in (None, 1, 3, 12):
                                got_s = stats.by_status(
                                    uow, actor=data.staff, family=family, year=year,
                                    month=month, scope=scope, id=public, side=side,
                                )  # fmt: skip
                                assert _status_rows(got_s) == _want_status(
                                    select(found, family, kind, internal, status="all"), year, month
                                ), (family, scope, side, year, month)
                                compared += 1
                        if family in stats.METHOD_FAMILIES and side is None:
                            for month in (None, 1, 2):
                                got_m = stats.by_method(
                                    uow, actor=data.staff, family=family, year=year,
                                    month=month, scope=scope, id=public, status=status,
                                )  # fmt: skip
                                inside = [c for c in mine if c.day.year == year
                                          and (month is None or c.day.month == month)]  # fmt: skip
                                want_m = grouped(inside, lambda c: (c.currency, c.method))
                                assert {(r.currency, r.method): (r.amount, r.count)
                                        for r in got_m.rows} == want_m  # fmt: skip
                                compared += 1
    # Dashboards: all-time succeeded totals.
    dash = stats.dashboard(uow, actor=data.staff)
    got_d = {t.currency: t.amounts for t in dash.totals}
    names = {"balance": "balances", "top_ups": "top_ups", "withdrawals": "withdrawals",
             "payments": "payments", "transfers": "transfers", "refunds": "refunds"}  # fmt: skip
    assert got_d == {
        "USD": {n: sum(c.amount for c in select(found, f, "system", 0)) for n, f in names.items()}
    }
    for scope, internal, public in scopes[1:]:
        if scope == "api_key":
            continue
        d = stats.dashboard(uow, actor=data.staff, scope=scope, id=public)
        totals = {t.currency: (t.amounts, t.counts) for t in d.totals}
        if scope == "card":
            figures = {"balance": ("balances", "card"), "top_ups": ("top_ups", "card"),
                       "withdrawals": ("withdrawals", "card"), "payments": ("payments", "card"),
                       "refunds": ("refunds", "card"), "transfers_sent": ("transfers", "card"),
                       "transfers_received": ("transfers", "card_received")}  # fmt: skip
        else:
            figures = {"balance": ("balances", "merchant"), "payments": ("payments", "merchant"),
                       "refunds": ("refunds", "merchant")}  # fmt: skip
        want_amounts = {n: sum(c.amount for c in select(found, f, k, internal))
                        for n, (f, k) in figures.items()}  # fmt: skip
        want_counts = {n: len(select(found, f, k, internal)) for n, (f, k) in figures.items()}
        assert totals == {"USD": (want_amounts, want_counts)}, (scope, public)
        compared += 1
    return compared


def _yearly(mine: list[Cell], year: int, balance: bool = False):
    from tests.statistics.conftest import yearly

    return yearly(mine, year, balance)


def _status_rows(b: stats.Breakdown) -> dict:
    return {(r.currency, r.status, r.year, r.month): (r.amount, r.count) for r in b.rows}


def _want_status(found: list[Cell], year: int, month: int | None) -> dict:
    if month is None:
        periods = [(year - 1, None), (year, None)]
    else:
        periods = [(year - (month == 1), (month - 2) % 12 + 1), (year, month)]
    out = {}
    inside_any = [
        c
        for c in found
        if c.status in ("succeeded", "failed")
        and any(c.day.year == y and (m is None or c.day.month == m) for y, m in periods)
    ]
    for cur in sorted({c.currency for c in inside_any}):
        for y, m in periods:
            for st in ("succeeded", "failed"):
                inside = [c for c in found if c.currency == cur and c.status == st
                          and c.day.year == y and (m is None or c.day.month == m)]  # fmt: skip
                out[(cur, st, y, m)] = (sum(c.amount for c in inside), len(inside))
    return out


def test_every_family_and_scope_equals_the_independent_computation(uow, data):
    assert check_everything(uow, data) > 500
    # The dataset has what the views distinguish: several months, statuses and methods.
    found = cells(uow)
    assert {c.family for c in found} == set(stats.FAMILIES)
    assert {c.status for c in found if c.family == "payments"} == {
        "succeeded", "failed", "pending", "canceled"}  # fmt: skip
    assert {c.status for c in found if c.family == "top_ups"} >= {"succeeded", "failed"}
    assert {c.status for c in found if c.family == "withdrawals"} == {
        "succeeded", "failed", "pending"}  # fmt: skip
    assert len({c.method for c in found if c.family == "payments"}) == 3
    assert {c.day.year for c in found} == {2025, 2026}


def test_right_after_a_new_movement_and_a_status_change(uow, data, clock):
    shop = data.shop.merchant.public_id
    before = stats.figures(uow, actor=data.staff, family="payments", period="monthly",
                           year=2026, scope="merchant", id=shop)  # fmt: skip
    jan = as_lists(before)["USD"][0]
    # The held payment (January, pending) is captured in April: it moves to succeeded in
    # January, the month it was made.
    at(clock, 2026, 4, 2)
    payments.capture_payment(uow, actor=data.shop.api, merchant=data.shop.merchant.id,
                             payment=data.held, idempotency_key=new_key())  # fmt: skip
    after = as_lists(stats.figures(
        uow, actor=data.staff, family="payments", period="monthly", year=2026,
        scope="merchant", id=data.shop.merchant.public_id))["USD"][0]  # fmt: skip
    assert after == (jan[0] + 2000, jan[1] + 1)
    pending = as_lists(stats.figures(
        uow, actor=data.staff, family="payments", period="monthly", year=2026,
        scope="merchant", id=data.shop.merchant.public_id, status="pending",
        currency="USD"))  # fmt: skip
    assert pending == {"USD": [(0, 0)] * 12}  # asked for a currency: zero-filled
    # A new payment and a new transfer, and the pending withdrawal confirmed.
    pay(uow, data.shop, data.b1, "3.25")
    wallet.transfer(uow, actor=data.alice, from_card_id=data.a1.card_id,
                    to_card_id=data.a2.card_id, amount=usd("1"),
                    idempotency_key=new_key())  # fmt: skip
    wallet.confirm_withdrawal(uow, actor=SYSTEM, withdrawal_id=data.pending_withdrawal)
    check_everything(uow, data)


def test_a_status_change_moves_the_amount_between_statuses(uow, data):
    def feb(status: str) -> tuple[int, int]:
        got = stats.figures(uow, actor=data.staff, family="withdrawals", period="monthly",
                            year=2026, status=status, currency="USD")  # fmt: skip
        return as_lists(got)["USD"][1]

    pending, succeeded = feb("pending"), feb("succeeded")
    assert pending == (2000, 1)
    wallet.fail_withdrawal(uow, actor=SYSTEM, withdrawal_id=data.pending_withdrawal)
    assert feb("pending") == (0, 0)
    assert feb("succeeded") == succeeded
    assert feb("failed") == (3000 + 2000, 2)


def test_balances_are_closing_balances_of_the_wallets(uow, data):
    got = stats.figures(uow, actor=data.alice, family="balances", period="monthly", year=2026,
                        scope="card", id=ids(uow, data)["a1"][2])  # fmt: skip
    closing = [p.amount for p in got.series[0].points]
    balance = uow.run(lambda u: u.execute(
        "SELECT posted_minor FROM accounts WHERE card_id = :c", {"c": data.a1.card_id}
    ).scalar())  # fmt: skip
    assert closing[-1] == balance  # December 2026: today's balance carried forward
    assert closing[0] != closing[1]  # the February withdrawal lowered it


class TestRefusals:
    @pytest.mark.parametrize("year", [1999, 2101, -1])
    def test_a_year_out_of_range_names_year(self, uow, data, year):
        with pytest.raises(stats.OutOfRange) as exc:
            stats.figures(uow, actor=data.staff, family="payments", period="monthly", year=year)
        assert exc.value.param == "year"

    @pytest.mark.parametrize("month", [0, 13])
    def test_a_month_out_of_range_names_month(self, uow, data, month):
        for view in (stats.by_status, stats.by_method):
            with pytest.raises(stats.OutOfRange) as exc:
                view(uow, actor=data.staff, family="payments", year=2026, month=month)
            assert exc.value.param == "month"

    def test_unknown_family_scope_status_side_method(self, uow, data):
        cases = [
            ({"family": "loans"}, "family"),
            ({"family": "top_ups", "scope": "merchant", "id": data.shop.merchant.public_id},
             "scope"),
            ({"family": "payments", "status": "processing"}, "status"),
            ({"family": "payments", "side": "received"}, "side"),
            ({"family": "withdrawals", "method": "cash"}, "method"),
        ]  # fmt: skip
        for kw, param in cases:
            with pytest.raises(InvalidInput) as exc:
                stats.figures(uow, actor=data.staff, period="monthly", year=2026, **kw)
            assert exc.value.param == param, kw


class TestWhoSeesWhat:
    def test_a_cardholder_sees_their_cards_only(self, uow, data):
        mine, theirs = ids(uow, data)["a1"][2], ids(uow, data)["b1"][2]
        stats.figures(uow, actor=data.alice, family="top_ups", period="yearly", year=2026,
                      scope="card", id=mine)  # fmt: skip
        stats.dashboard(uow, actor=data.alice, scope="card", id=mine)
        with pytest.raises(NotFound):
            stats.figures(uow, actor=data.alice, family="top_ups", period="yearly", year=2026,
                          scope="card", id=theirs)  # fmt: skip
        with pytest.raises(NotFound):
            stats.dashboard(uow, actor=data.alice, scope="card", id=theirs)
        with pytest.raises(Forbidden):
            stats.dashboard(uow, actor=data.alice)
        with pytest.raises(NotFound):
            stats.figures(uow, actor=data.alice, family="payments", period="yearly", year=2026,
                          scope="merchant", id=data.shop.merchant.public_id)  # fmt: skip

    def test_a_merchant_sees_its_own_merchant_and_keys(self, uow, data):
        keys = ids(uow, data)
        for actor in (data.shop.api, data.shop.owner):
            stats.figures(uow, actor=actor, family="payments", period="monthly", year=2026,
                          scope="merchant", id=data.shop.merchant.public_id)  # fmt: skip
            stats.figures(uow, actor=actor, family="refunds", period="monthly", year=2026,
                          scope="api_key", id=keys["shop_key"][2])  # fmt: skip
            stats.dashboard(uow, actor=actor, scope="merchant", id=data.shop.merchant.public_id)
            with pytest.raises(NotFound):
                stats.figures(uow, actor=actor, family="payments", period="monthly", year=2026,
                              scope="merchant", id=data.other.merchant.public_id)  # fmt: skip
            with pytest.raises(NotFound):
                stats.figures(uow, actor=actor, family="payments", period="monthly", year=2026,
                              scope="api_key", id=keys["other_key"][2])  # fmt: skip
            with pytest.raises(NotFound):
                stats.figures(uow, actor=actor, family="payments", period="monthly", year=2026,
                              scope="card", id=keys["a1"][2])  # fmt: skip
            with pytest.raises(Forbidden):
                stats.figures(uow, actor=actor, family="payments", period="monthly", year=2026)
        # An API key names its own merchant without an id.
        got = stats.dashboard(uow, actor=data.shop.api, scope="merchant")
        assert got.scope.id == data.shop.merchant.public_id

    def test_support_staff_see_everything(self, uow, make, data):
        support = make.user(roles=("support",))
        keys = ids(uow, data)
        stats.dashboard(uow, actor=support)
        for scope, _, public in keys.values():
            stats.figures(uow, actor=support, family="payments", period="monthly", year=2026,
                          scope=scope, id=public)  # fmt: skip

    def test_unknown_ids_are_not_found(self, uow, data):
        for scope, ref in (("card", "card_nope"), ("merchant", "mch_nope"),
                           ("api_key", "key_nope"), ("card", None)):  # fmt: skip
            with pytest.raises((NotFound, InvalidInput)):
                stats.figures(uow, actor=data.staff, family="payments", period="monthly",
                              year=2026, scope=scope, id=ref)  # fmt: skip
