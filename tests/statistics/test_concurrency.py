"""Hot merchant: many threads paying one merchant (and topping up, so the system scope is hot
across families too) commit without a conflict error, with real commits on separate
connections; the summed roll-ups then equal the payments and the recomputation agrees. The
writes did spread over the slots."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import pytest

from portal.domain.money import Money
from portal.services import statistics
from portal.services.merchants import payments
from portal.services.shared.uow import UnitOfWork
from portal.services.statistics import rollups as stats
from tests.concurrency.helpers import counting_retries, error_kinds, run_together, warm_pool
from tests.conftest import Factory, new_key
from tests.merchants.conftest import card_details, open_shop

pytestmark = pytest.mark.concurrency

THREADS = 16
EACH = 6


def test_many_threads_paying_one_merchant(real_uow: Callable[[], UnitOfWork], committing_engine):
    make = Factory(real_uow())
    staff = make.user(roles=("admin",))
    shop = open_shop(real_uow(), make, staff)
    owners = [make.user() for _ in range(4)]
    cards = [make.card(owners[i % 4], balance="200") for i in range(THREADS)]
    warm_pool(committing_engine)

    def work(i: int) -> int:
        paid = 0
        for n in range(EACH):
            amount = 100 + i * EACH + n  # every payment a different amount
            payments.create_payment(
                real_uow(), actor=shop.api, merchant=shop.merchant.id,
                amount=Money(amount, "USD"), card=card_details(cards[i]),
                idempotency_key=new_key(),
            )  # fmt: skip
            paid += amount
        return paid

    with counting_retries() as retries:
        outcomes = run_together(THREADS, work)
    assert error_kinds(outcomes) == {}
    expected = sum(o.value for o in outcomes)
    year = datetime.now(UTC).year
    got = stats.figures(real_uow(), actor=staff, family="payments", period="yearly", year=year,
                        scope="merchant", id=shop.merchant.public_id)  # fmt: skip
    assert got.series[0].points[-1].amount == expected
    assert got.series[0].points[-1].count == THREADS * EACH
    in_db = real_uow().read(
        "SELECT sum(received_minor) AS s, count(*) AS n FROM payments WHERE merchant_id = :m",
        {"m": shop.merchant.id},
    )[0]
    assert (in_db.s, in_db.n) == (expected, THREADS * EACH)
    slots = real_uow().read(
        "SELECT count(DISTINCT slot) FROM stat_rollups WHERE family = 'payments'"
        " AND scope_kind = 'merchant' AND scope_id = :m AND grain = 'month'",
        {"m": shop.merchant.id},
    )[0][0]
    assert slots > 1  # the merchant's figure was written on several rows
    today = datetime.now(UTC).date()
    assert statistics.recompute_check(real_uow(), (today, today)).ok
    # No deadlock or serialization failure was even retried.
    assert retries.count == 0, retries.messages[:3]
