"""A person's formats: the locale (number, currency and date formats; the pages' language stays
English) and the time zone their pages show times in. The API and CSV exports keep minor units
and UTC whatever is chosen here.

The time zone starts empty: a sign-up or sign-in brings the browser's (a hidden field filled by
``app.js``) and fills it only while it is empty, so a zone the person chose is never replaced by
the zone of a machine they happen to sign in on.
"""

from __future__ import annotations

from portal.domain.errors import InvalidInput
from portal.domain.locale import LOCALES, normalize_locale, valid_time_zone
from portal.domain.types import Actor
from portal.services.identity.accounts import UserView, load_user_view, require_user
from portal.services.shared import audit
from portal.services.shared.uow import UnitOfWork


def set_preferences(uow: UnitOfWork, *, actor: Actor, locale: str, time_zone: str) -> UserView:
    """Choose one's locale (a name in ``LOCALES``) and time zone (an IANA name). Raises
    Unauthenticated, InvalidInput (param ``locale`` or ``time_zone``)."""
    user_id = require_user(actor)
    if locale not in LOCALES:
        raise InvalidInput("choose one of the formats listed", param="locale")
    zone = valid_time_zone(time_zone)
    if zone is None:
        raise InvalidInput("choose a time zone from the list, like Asia/Jakarta", param="time_zone")

    def work(u: UnitOfWork) -> UserView:
        u.execute(
            "UPDATE users SET locale = :locale, time_zone = :zone, updated_at = :now"
            " WHERE id = :id",
            {"locale": locale, "zone": zone, "now": u.now(), "id": user_id},
        )
        audit.record(u, actor, "user.preferences", "user", user_id,
                     data={"locale": locale, "time_zone": zone})  # fmt: skip
        view = load_user_view(u, user_id)
        assert view is not None  # the actor's own row
        return view

    return uow.run(work)


def adopt_browser_defaults(
    uow: UnitOfWork, *, user_id: int, time_zone: str | None, locale: str | None = None
) -> None:
    """What a sign-up or sign-in learnt from the browser: its time zone, kept only while the
    user has none, and (at sign-up, from Accept-Language) a locale. Values that name no zone or
    locale are ignored. Raises nothing."""
    zone = valid_time_zone(time_zone)
    chosen = normalize_locale(locale) if locale else None
    if zone is None and chosen is None:
        return

    def work(u: UnitOfWork) -> None:
        if zone is not None:
            u.execute(
                "UPDATE users SET time_zone = :zone WHERE id = :id AND time_zone IS NULL",
                {"zone": zone, "id": user_id},
            )
        if chosen is not None:
            u.execute(
                "UPDATE users SET locale = :locale WHERE id = :id",
                {"locale": chosen, "id": user_id},
            )

    uow.run(work)
