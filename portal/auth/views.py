"""Routes of the sign-in and account pages.

Every page works as plain form posts (Post/Redirect/Get); on the account page htmx swaps just
the section a form belongs to (``hx-post`` answering its fragment, 422 with the errors next to
the fields, an out-of-band ``#flash`` message on success). Mail goes out after the response
has been sent, so the time an answer takes says nothing about whether an account exists.
"""

from __future__ import annotations

import logging
import math
import re
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlsplit

import pyotp
import segno
from flask import (
    abort,
    current_app,
    flash,
    g,
    make_response,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from flask_login import current_user, logout_user
from flask_wtf import FlaskForm
from flask_wtf.csrf import CSRFError
from werkzeug.exceptions import TooManyRequests
from werkzeug.wrappers import Response

from portal.auth import bp, throttle
from portal.auth.forms import (
    PREFIX,
    ChangeEmailForm,
    ChangePasswordForm,
    ConfirmTotpForm,
    ForgotForm,
    LoginForm,
    PasswordCheckForm,
    PreferencesForm,
    RegisterForm,
    ResetForm,
    SecondFactorForm,
    StartTotpForm,
    add_service_error,
)
from portal.domain.errors import (
    Conflict,
    InvalidCredentials,
    InvalidInput,
    InvalidState,
    NotFound,
    PortalError,
    Unauthenticated,
)
from portal.domain.ids import is_public_id
from portal.domain.locale import best_locale, format_moment, valid_time_zone
from portal.services.identity import accounts, mfa, preferences, sessions
from portal.services.identity.accounts import UserView
from portal.web import mail
from portal.web.auth import (
    PENDING_KEY,
    await_second_factor,
    current_actor,
    landing_url,
    login_manager,
    login_required,
    pending_second_factor,
    sign_in,
    sign_out,
    step_up,
)
from portal.web.auth import safe_next as web_safe_next
from portal.web.render import render_page as _render
from portal.web.render import wants_fragment as _is_htmx
from portal.web.uow import make_uow

log = logging.getLogger("portal.auth")

#: The one answer to every failed sign-in (unknown email, wrong password, archived account).
SIGN_IN_FAILED = "Email or password is incorrect."
SECOND_FACTOR_FAILED = (
    "That code is not right. Enter the current code from your app, or one of your recovery codes."
)
#: How long a correct password waits for its second factor.
_BASE32 = re.compile(r"^[A-Z2-7]{16,64}$")


# -- helpers -------------------------------------------------------------------------------------
def _fragments(
    *parts: tuple[str, Mapping[str, Any]],
    status: int = 200,
    message: str | None = None,
    category: str = "success",
) -> Response:
    """Fragments for an htmx answer, plus an out-of-band ``#flash`` message."""
    html = "".join(render_template(name, **context) for name, context in parts)
    if message:
        html += render_template("auth/_flash.html", message=message, category=category)
    response = make_response(html, status)
    response.vary.add("HX-Request")
    return response


def _leave(url: str) -> Response:
    """Go to another page: a redirect, or for htmx a full-page ``HX-Redirect``."""
    if _is_htmx():
        response = make_response("", 200)
        response.headers["HX-Redirect"] = url
        return response
    return redirect(url)


def _status(default: int = 422) -> int:
    return default if request.method == "POST" else 200


def safe_next(value: object) -> str | None:
    """Where to go after signing in: a same-site path, never back to sign-in or sign-out."""
    target = web_safe_next(value)
    if target is None or urlsplit(target).path in (url_for("auth.logout"), url_for("auth.login")):
        return None
    return target


def _account_url(fragment: str = "") -> str:
    return url_for("auth.account") + (f"#{fragment}" if fragment else "")


def _public_url(endpoint: str, **values: Any) -> str:
    return str(current_app.config["PUBLIC_URL"]).rstrip("/") + url_for(endpoint, **values)


# -- mail, sent after the response --------------------------------------------------------------
def _queue_mail(to: str, subject: str, body: str) -> None:
    g.setdefault("auth_mail", []).append((to, subject, body))


@bp.after_request
def _finish(response: Response) -> Response:
    """Keep these pages out of caches (they carry secrets, recovery codes and personal data),
    then send the queued mail once the response has gone."""
    response.headers.setdefault("Cache-Control", "no-store")
    queued = g.pop("auth_mail", None)
    if queued:
        app = current_app._get_current_object()  # type: ignore[attr-defined]

        def deliver() -> None:
            with app.app_context():
                for to, subject, body in queued:
                    try:
                        mail.send(to, subject, body)
                    except Exception:  # a mail server outage must not break the page
                        log.exception("could not send %r to %s", subject, to)

        response.call_on_close(deliver)
    return response


def _mail_verification(user: UserView, token: str, *, to: str | None = None) -> None:
    url = _public_url("auth.verify_email", token=token)
    minutes = make_uow().settings.email_token_minutes
    if to is None:
        body = (
            f"Hello {user.first_name},\n\n"
            "Please confirm your email address for Portal by opening this link:\n\n"
            f"{url}\n\n"
            f"The link works once and expires in {minutes} minutes. If you did not create a "
            "Portal account, you can ignore this message.\n"
        )
        _queue_mail(user.email, "Confirm your email address for Portal", body)
        return
    body = (
        f"Hello {user.first_name},\n\n"
        "To make this your Portal email address, open this link:\n\n"
        f"{url}\n\n"
        f"The link works once and expires in {minutes} minutes. Until you open it, your "
        "account keeps its current address. If you did not ask for this, ignore this message.\n"
    )
    _queue_mail(to, "Confirm your new email address for Portal", body)


def _mail_notice(user: UserView, subject: str, text: str) -> None:
    body = (
        f"Hello {user.first_name},\n\n{text}\n\n"
        "If this was not you, reset your password at once: "
        f"{_public_url('auth.forgot')}\n"
    )
    _queue_mail(user.email, subject, body)


# -- sign-in state -----------------------------------------------------------------------------
def _fresh_user() -> UserView:
    return accounts.get_user_view(make_uow(), current_user.id)


@bp.before_request
def _htmx_needs_sign_in() -> Response | None:
    """An htmx request whose session has ended gets a full-page trip to the sign-in page, not
    the sign-in page swapped into a section of the account page."""
    if (
        _is_htmx()
        and request.endpoint in _SIGNED_IN_ENDPOINTS
        and not current_user.is_authenticated
    ):
        response = make_response("", 401)
        response.headers["HX-Redirect"] = url_for("auth.login", next=_account_url())
        return response
    return None


# -- throttled and expired forms ----------------------------------------------------------------
#: The pages whose form is shown again, with a notice, when a request is throttled or its CSRF
#: token has expired.
_FORM_PAGES: dict[str, tuple[str, Callable[[], FlaskForm]]] = {
    "auth.login": ("auth/login.html", LoginForm),
    "auth.mfa": ("auth/mfa.html", SecondFactorForm),
    "auth.register": ("auth/register.html", RegisterForm),
    "auth.forgot": ("auth/forgot.html", ForgotForm),
}


def _form_page_again(status: int, notice: str, title: str) -> Response:
    endpoint = request.endpoint or ""
    if endpoint in _FORM_PAGES:
        template, form_class = _FORM_PAGES[endpoint]
        return _render(template, status, form=form_class(), notice=notice)
    return _render("auth/message.html", status, title=title, message=notice)


@bp.errorhandler(TooManyRequests)
def _throttled(_error: TooManyRequests) -> Response:
    minutes = math.ceil(throttle.retry_after_seconds() / 60)
    wait = "a minute" if minutes <= 1 else f"{minutes} minutes"
    if request.endpoint in ("auth.login", "auth.mfa"):
        notice = (
            f"Too many failed sign-in attempts. For your security, wait {wait} and try again, "
            "or reset your password."
        )
    else:
        notice = f"Too many requests from here. Please wait {wait} and try again."
    return _form_page_again(429, notice, "Please wait")


@bp.errorhandler(CSRFError)
def _form_expired(error: CSRFError) -> Response:
    """A form left open too long (or posted from elsewhere): still a 400, but the same page
    again with a fresh token rather than an error page. htmx requests get the usual answer."""
    if _is_htmx():
        return _render("errors/_error.html", 400, status=400, title="Bad Request",
                       message=error.description)  # fmt: skip
    return _form_page_again(
        400,
        "This form had expired, so nothing was done. Please try again.",
        "Please try again",
    )


# -- sign-up -----------------------------------------------------------------------------------
@bp.route("/register", methods=["GET", "POST"])
@throttle.email_per_address
def register() -> Response:
    if request.method == "GET" and current_user.is_authenticated:
        return redirect(_account_url())
    form = RegisterForm()
    if form.validate_on_submit():
        try:
            user = accounts.register(
                make_uow(),
                email=form.email.data or "",
                first_name=form.first_name.data or "",
                last_name=form.last_name.data or "",
                password=form.password.data or "",
                password_confirmation=form.password_confirmation.data or "",
            )
        except (InvalidInput, Conflict) as error:
            add_service_error(form, error)
        else:
            if current_user.is_authenticated:
                sign_out()
            sign_in(user, mfa_verified=False)
            # Formats from the browser: its languages (Accept-Language) and its time zone.
            preferences.adopt_browser_defaults(
                make_uow(), user_id=user.id, time_zone=form.time_zone.data,
                locale=best_locale([tag for tag, _ in request.accept_languages]),
            )  # fmt: skip
            token = accounts.issue_email_token(make_uow(), user_id=user.id, purpose="verify_email")
            _mail_verification(user, token)
            flash(
                f"Welcome to Portal, {user.first_name}. Check your email: we sent a link to "
                f"{user.email} to verify your address.",
                "success",
            )
            response = redirect(_account_url())
            throttle.remember_device(response, user.id)
            return response
    return _render("auth/register.html", _status(), form=form)


# -- sign-in -----------------------------------------------------------------------------------
@bp.route("/login", methods=["GET", "POST"])
@throttle.per_address
@throttle.per_account
@throttle.per_device
def login() -> Response:
    next_url = safe_next(request.values.get("next"))
    if request.method == "GET" and current_user.is_authenticated and current_user.mfa_satisfied:
        return redirect(next_url or landing_url(current_user.user))
    form = LoginForm()
    if request.method == "GET":
        form.next.data = next_url or ""
    if not form.validate_on_submit():
        return _render("auth/login.html", _status(), form=form)
    email = form.email.data or ""
    try:
        user = accounts.authenticate(make_uow(), email=email, password=form.password.data or "")
    except InvalidCredentials:
        throttle.record_failure()
        form.form_errors.append(SIGN_IN_FAILED)
        return _render("auth/login.html", 401, form=form)
    if current_user.is_authenticated:
        sign_out()  # the old session ends; the new one gets a new identifier
    if user.mfa_enabled:
        await_second_factor(user.id, next_url, method="password")
        return redirect(url_for("auth.mfa"))
    sign_in(user, mfa_verified=False)
    preferences.adopt_browser_defaults(make_uow(), user_id=user.id, time_zone=form.time_zone.data)
    if mfa.mfa_required(user):
        response = redirect(url_for("auth.mfa_setup", next=next_url))
    else:
        response = redirect(next_url or landing_url(user))
    throttle.remember_device(response, user.id)
    return response


@bp.route("/mfa", methods=["GET", "POST"], endpoint="mfa")
@throttle.per_address
@throttle.per_account
@throttle.per_device
def second_factor() -> Response:
    """The second step of signing in (a pending password sign-in), or a step up for a session
    that has not passed its second factor yet."""
    pending = pending_second_factor()
    stepping_up = (
        pending is None
        and current_user.is_authenticated
        and not current_user.mfa_verified
        and current_user.user.mfa_enabled
    )
    if pending is None and not stepping_up:
        if current_user.is_authenticated:
            return redirect(safe_next(request.values.get("next")) or landing_url(current_user.user))
        if session.pop(PENDING_KEY, None) is not None:
            flash("Signing in took too long. Please sign in again.", "info")
        return redirect(url_for("auth.login"))
    next_url = safe_next(pending["next"] if pending else request.values.get("next"))
    form = SecondFactorForm()
    if request.method == "GET":
        form.next.data = next_url or ""
    if not form.validate_on_submit():
        return _render("auth/mfa.html", _status(), form=form)
    user_id = int(pending["user_id"]) if pending else current_user.id
    code = form.code.data or ""
    if not mfa.verify_second_factor(make_uow(), user_id=user_id, code=code):
        throttle.record_failure()
        form.code.errors = [*form.code.errors, SECOND_FACTOR_FAILED]
        return _render("auth/mfa.html", 401, form=form)
    if pending:
        try:
            user = accounts.get_user_view(make_uow(), user_id)
            sign_in(user, mfa_verified=True)
            preferences.adopt_browser_defaults(
                make_uow(), user_id=user.id, time_zone=form.time_zone.data
            )
        except (NotFound, Unauthenticated):
            session.clear()
            flash("Please sign in again.", "info")
            return redirect(url_for("auth.login"))
    else:
        user = current_user.user
        step_up()
    if not re.fullmatch(r"\s*\d{6}\s*", code):
        left = mfa.recovery_codes_left(make_uow(), actor=user.actor)
        flash(
            f"You signed in with a recovery code; {left} left. Make new ones on your account "
            "page if you are running low.",
            "info",
        )
    response = redirect(next_url or landing_url(user))
    throttle.remember_device(response, user.id)
    return response


@bp.post("/logout")
def logout() -> Response:
    sign_out()
    flash("You have signed out.", "info")
    return _leave(url_for("auth.login"))


# -- email links -------------------------------------------------------------------------------
@bp.get("/verify/<token>")
def verify_email(token: str) -> Response:
    try:
        user = accounts.verify_email(make_uow(), token=token)
    except InvalidInput:
        return _render(
            "auth/message.html",
            404,
            title="This link has expired",
            message=(
                "This verification link is not valid any more: it was used already, it "
                "expired, or a newer one replaced it."
            ),
            resend=True,
        )
    except Conflict:
        return _render(
            "auth/message.html",
            409,
            title="That address is taken",
            message="Another account uses that email address now, so it cannot be yours too.",
        )
    flash(f"Thank you: {user.email} is verified.", "success")
    if current_user.is_authenticated:
        return redirect(_account_url())
    return redirect(url_for("auth.login"))


@bp.route("/forgot", methods=["GET", "POST"])
@throttle.email_per_address
@throttle.email_per_recipient
def forgot() -> Response:
    form = ForgotForm()
    if form.validate_on_submit():
        email = form.email.data or ""
        found = accounts.request_password_reset(make_uow(), email=email)
        if found is not None:
            user, token = found
            minutes = make_uow().settings.password_reset_minutes
            _queue_mail(
                user.email,
                "Reset your Portal password",
                f"Hello {user.first_name},\n\n"
                "Someone asked to reset the password of your Portal account. To choose a new "
                "password, open this link:\n\n"
                f"{_public_url('auth.reset_password', token=token)}\n\n"
                f"The link works once and expires in {minutes} minutes. If you did not ask for "
                "this, ignore this message: your password stays as it is.\n",
            )
        # The same answer whether or not an account has this address.
        return _render("auth/forgot_sent.html", email=email)
    return _render("auth/forgot.html", _status(), form=form)


@bp.route("/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Response:
    form = ResetForm()
    if form.validate_on_submit():
        try:
            user = accounts.reset_password(
                make_uow(),
                token=token,
                password=form.password.data or "",
                password_confirmation=form.password_confirmation.data or "",
            )
        except InvalidInput as error:
            if error.code != "token_invalid":
                add_service_error(form, error)
                return _render("auth/reset.html", 422, form=form, token=token)
            return _render(
                "auth/message.html",
                404,
                title="This link has expired",
                message=(
                    "This password reset link is not valid any more: it was used already, it "
                    "expired, or a newer one replaced it. Ask for a new one."
                ),
                forgot=True,
            )
        if current_user.is_authenticated:
            logout_user()
        session.clear()  # every session of the user was revoked by the reset
        _mail_notice(
            user, "Your Portal password was reset", "The password of your account was reset."
        )
        flash("Your password is changed. Sign in with your new password.", "success")
        return redirect(url_for("auth.login"))
    return _render("auth/reset.html", _status(), form=form, token=token)


# -- second factor set-up ----------------------------------------------------------------------
def _enrolment_for(secret: str, email: str) -> mfa.TotpEnrolment:
    """The QR code and secret to show again after a mistyped confirmation code."""
    uri = pyotp.TOTP(secret).provisioning_uri(name=email, issuer_name=mfa.ISSUER_NAME)
    svg = segno.make(uri, error="m").svg_inline(scale=4, dark="#000", light="#fff")
    return mfa.TotpEnrolment(secret=secret, otpauth_uri=uri, qr_svg=svg)


def _setup_page(
    enrolment: mfa.TotpEnrolment | None,
    form: ConfirmTotpForm,
    status: int = 200,
    start: StartTotpForm | None = None,
) -> Response:
    user = current_user.user
    return _render(
        "auth/mfa_setup.html",
        status,
        enrolment=enrolment,
        form=form,
        start=start or StartTotpForm(formdata=None, next=form.next.data or ""),
        required=mfa.mfa_required(user),
        needs_code=mfa.enrolment_code_required(user),
        next_url=safe_next(form.next.data),
    )


@bp.route("/mfa/setup", methods=["GET", "POST"], endpoint="mfa_setup")
@throttle.per_address
def mfa_setup() -> Response:
    """GET explains; POST starts (or restarts) enrolment and shows the QR code and secret.
    Staff without a second factor must give an enrolment code from an administrator: their
    password alone is not enough (a wrong code counts as a failed sign-in for the address's
    limit). Not behind ``login_required``: that decorator sends staff here."""
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    next_url = safe_next(request.values.get("next"))
    if current_user.user.mfa_enabled:
        flash("Two-step verification is on already.", "info")
        return redirect(next_url or _account_url())
    form = ConfirmTotpForm(formdata=None, next=next_url or "")
    if request.method == "GET":
        return _setup_page(None, form)
    start = StartTotpForm()
    if not start.validate_on_submit():
        return _setup_page(None, form, _status(), start)
    try:
        enrolment = mfa.begin_totp_enrolment(
            make_uow(), actor=current_actor(), enrolment_code=start.enrolment_code.data or None
        )
    except InvalidInput as error:
        throttle.record_failure()
        add_service_error(start, error, default="enrolment_code")
        return _setup_page(None, form, 422, start)
    return _setup_page(enrolment, form)


@bp.post("/mfa/setup/confirm")
def mfa_confirm() -> Response:
    if not current_user.is_authenticated:
        return login_manager.unauthorized()
    form = ConfirmTotpForm()
    secret = (request.form.get("secret") or "").strip().upper()
    enrolment = _enrolment_for(secret, current_user.user.email) if _BASE32.match(secret) else None
    if not form.validate_on_submit():
        return _setup_page(enrolment, form, 422)
    try:
        codes = mfa.confirm_totp(make_uow(), actor=current_actor(), code=form.code.data or "")
    except InvalidInput as error:
        add_service_error(form, error, default="code")
        return _setup_page(enrolment, form, 422)
    except InvalidState as error:
        if error.code == "mfa_already_enabled":
            return redirect(_account_url("mfa"))
        add_service_error(form, error, default="code")
        return _setup_page(None, form, 409)
    if not current_user.mfa_verified:
        step_up()  # the code just proved the second factor for this session too
    user = _fresh_user()
    _mail_notice(
        user,
        "Two-step verification is on",
        "Two-step verification was turned on for your Portal account.",
    )
    return _render(
        "auth/recovery_codes.html",
        codes=codes,
        first_time=True,
        next_url=safe_next(form.next.data) or _account_url(),
    )


# -- the account page --------------------------------------------------------------------------
@dataclass(frozen=True)
class SessionRow:
    kind: str
    #: What the revoke form names: a web session's ``ses_...`` id, an API family's UUID.
    id: str
    device: str
    ip: str
    created: str
    last_seen: str
    current: bool


def describe_agent(agent: str) -> str:
    """A short, human name for a browser from its User-Agent ("Firefox on Linux")."""
    agent = agent or ""
    browsers = (
        ("Edg/", "Edge"),
        ("OPR/", "Opera"),
        ("Firefox/", "Firefox"),
        ("Chrome/", "Chrome"),
        ("Chromium/", "Chromium"),
        ("Safari/", "Safari"),
        ("curl/", "curl"),
        ("python-requests", "Python"),
    )
    systems = (
        ("Android", "Android"),
        ("iPhone", "iPhone"),
        ("iPad", "iPad"),
        ("Windows", "Windows"),
        ("Mac OS X", "macOS"),
        ("CrOS", "ChromeOS"),
        ("Linux", "Linux"),
    )
    browser = next((name for key, name in browsers if key in agent), None)
    system = next((name for key, name in systems if key in agent), None)
    if browser and system:
        return f"{browser} on {system}"
    return browser or system or ("Unknown device" if not agent else agent[:40])


def _when(moment: datetime) -> str:
    """A moment in the signed-in user's zone and format."""
    user = current_user.user
    if user.time_zone == "UTC":
        return moment.astimezone(UTC).strftime("%d %b %Y, %H:%M UTC")
    return format_moment(moment, user.time_zone, user.locale)


def _session_rows() -> list[SessionRow]:
    views = sessions.list_sessions(
        make_uow(), actor=current_actor(), current_session_id=current_user.session_id
    )
    return [
        SessionRow(
            kind=v.kind,
            id=v.public_id,
            device=(
                describe_agent(v.user_agent)
                if v.kind == "web"
                else f"API access · {describe_agent(v.user_agent)}"
            ),
            ip=v.ip,
            created=_when(v.created_at),
            last_seen=_when(v.last_seen_at),
            current=v.current,
        )
        for v in views
    ]


def _blank(form_class: type[FlaskForm], key: str) -> FlaskForm:
    return form_class(formdata=None, prefix=PREFIX[key])


def _mfa_context(user: UserView, **overrides: Any) -> dict[str, Any]:
    context: dict[str, Any] = {
        "user": user,
        "codes_left": (
            mfa.recovery_codes_left(make_uow(), actor=user.actor) if user.mfa_enabled else None
        ),
        "codes_form": _blank(PasswordCheckForm, "codes"),
        "disable_form": _blank(PasswordCheckForm, "disable"),
        "new_codes": None,
        "staff": mfa.mfa_required(user),
    }
    context.update(overrides)
    return context


def _account_page(status: int = 200, **overrides: Any) -> Response:
    user = _fresh_user()
    context: dict[str, Any] = {
        "user": user,
        "password_form": _blank(ChangePasswordForm, "password"),
        "email_form": _blank(ChangeEmailForm, "email"),
        "preferences_form": _preferences_form(user),
        "sessions": _session_rows(),
        **_mfa_context(user),
    }
    context.update(overrides)
    return _render("auth/account.html", status, **context)


@bp.get("/account")
@login_required()
def account() -> Response:
    return _account_page()


def _preferences_form(user: UserView) -> FlaskForm:
    form = PreferencesForm(formdata=None, prefix=PREFIX["preferences"])
    form.locale.data = user.locale
    form.time_zone.data = user.time_zone
    return form


@bp.post("/account/preferences")
@login_required()
def change_preferences() -> Response:
    """The formats of numbers, money and dates, and the pages' time zone (the pages' language
    stays English; the API and CSV keep minor units and UTC)."""
    form = PreferencesForm(prefix=PREFIX["preferences"])
    if form.validate_on_submit():
        try:
            user = preferences.set_preferences(
                make_uow(), actor=current_actor(), locale=form.locale.data or "",
                time_zone=form.time_zone.data or "",
            )  # fmt: skip
        except InvalidInput as error:
            add_service_error(form, error)
        else:
            zone = valid_time_zone(user.time_zone) or "UTC"
            message = f"Saved. Times now show in {zone.replace('_', ' ')}."
            if _is_htmx():
                return _fragments(
                    ("auth/_preferences_form.html", {"preferences_form": _preferences_form(user),
                                                     "user": user}),
                    message=message,
                )  # fmt: skip
            flash(message, "success")
            return redirect(_account_url("preferences"))
    if _is_htmx():
        context = {"preferences_form": form, "user": _fresh_user()}
        return _fragments(("auth/_preferences_form.html", context), status=422)
    return _account_page(422, preferences_form=form)


@bp.post("/account/verify-email")
@login_required()
@throttle.email_per_address
def resend_verification() -> Response:
    user = _fresh_user()
    try:
        token = accounts.issue_email_token(make_uow(), user_id=user.id, purpose="verify_email")
    except InvalidState:
        message, category = "Your email address is verified already.", "info"
    else:
        _mail_verification(user, token)
        message, category = f"We sent a new verification link to {user.email}.", "success"
    if _is_htmx():
        return _fragments(
            ("auth/_profile.html", {"user": user, "sent": True}),
            message=message,
            category=category,
        )
    flash(message, category)
    return redirect(_account_url())


def _count_wrong_password(error: PortalError) -> None:
    """A wrong current password on an account form counts as a failed sign-in (the sign-in
    limits per address, account and device apply): a stolen session cannot guess it freely."""
    if error.code == "wrong_password":
        throttle.record_failure()


@bp.post("/account/password")
@login_required()
@throttle.per_address
@throttle.per_account
@throttle.per_device
def change_password() -> Response:
    form = ChangePasswordForm(prefix=PREFIX["password"])
    if form.validate_on_submit():
        try:
            accounts.change_password(
                make_uow(),
                actor=current_actor(),
                current_password=form.current_password.data or "",
                password=form.password.data or "",
                password_confirmation=form.password_confirmation.data or "",
                keep_session_id=current_user.session_id,
            )
        except (InvalidInput, Conflict) as error:
            _count_wrong_password(error)
            add_service_error(form, error)
        else:
            user = _fresh_user()
            _mail_notice(
                user,
                "Your Portal password was changed",
                "The password of your Portal account was changed, and every other session "
                "was signed out.",
            )
            message = "Your password is changed. Every other session and device is signed out."
            if _is_htmx():
                return _fragments(
                    ("auth/_password_form.html", {"password_form": _blank(ChangePasswordForm,
                                                                          "password")}),
                    ("auth/_sessions.html", {"sessions": _session_rows(), "oob": True}),
                    message=message,
                )  # fmt: skip
            flash(message, "success")
            return redirect(_account_url("password"))
    if _is_htmx():
        return _fragments(("auth/_password_form.html", {"password_form": form}), status=422)
    return _account_page(422, password_form=form)


@bp.post("/account/email")
@login_required()
@throttle.email_per_address
@throttle.per_address
@throttle.per_account
@throttle.per_device
def change_email() -> Response:
    form = ChangeEmailForm(prefix=PREFIX["email"])
    if form.validate_on_submit():
        new_email = (form.new_email.data or "").strip()
        try:
            token = accounts.request_email_change(
                make_uow(),
                actor=current_actor(),
                password=form.password.data or "",
                new_email=new_email,
            )
        except (InvalidInput, Conflict) as error:
            _count_wrong_password(error)
            add_service_error(form, error, default="new_email")
        else:
            user = _fresh_user()
            _mail_verification(user, token, to=new_email)
            _mail_notice(
                user,
                "Your Portal email address is changing",
                f"Someone asked to change the email address of your Portal account to "
                f"{new_email}. It changes only once the link sent there is opened.",
            )
            message = (
                f"Check your email: we sent a link to {new_email}. Your address changes once "
                "you open it."
            )
            if _is_htmx():
                return _fragments(
                    ("auth/_email_form.html", {"email_form": _blank(ChangeEmailForm, "email")}),
                    message=message,
                )
            flash(message, "success")
            return redirect(_account_url("email"))
    if _is_htmx():
        return _fragments(("auth/_email_form.html", {"email_form": form}), status=422)
    return _account_page(422, email_form=form)


@bp.post("/mfa/recovery-codes")
@login_required()
@throttle.per_address
@throttle.per_account
@throttle.per_device
def regenerate_recovery_codes() -> Response:
    form = PasswordCheckForm(prefix=PREFIX["codes"])
    user = _fresh_user()
    if form.validate_on_submit():
        try:
            codes = mfa.regenerate_recovery_codes(
                make_uow(), actor=current_actor(), password=form.password.data or ""
            )
        except (InvalidInput, InvalidState) as error:
            _count_wrong_password(error)
            add_service_error(form, error, default="password")
        else:
            if _is_htmx():
                return _fragments(
                    ("auth/_mfa.html", _mfa_context(user, new_codes=codes)),
                    message="New recovery codes are ready; the old ones no longer work.",
                )
            return _render(
                "auth/recovery_codes.html",
                codes=codes,
                first_time=False,
                next_url=_account_url("mfa"),
            )
    if _is_htmx():
        return _fragments(("auth/_mfa.html", _mfa_context(user, codes_form=form)), status=422)
    return _account_page(422, codes_form=form)


@bp.post("/mfa/disable")
@login_required()
@throttle.per_address
@throttle.per_account
@throttle.per_device
def disable_mfa() -> Response:
    form = PasswordCheckForm(prefix=PREFIX["disable"])
    if form.validate_on_submit():
        try:
            mfa.disable_totp(make_uow(), actor=current_actor(), password=form.password.data or "")
        except (InvalidInput, InvalidState) as error:
            _count_wrong_password(error)
            add_service_error(form, error, default="password")
        else:
            user = _fresh_user()
            _mail_notice(
                user,
                "Two-step verification is off",
                "Two-step verification was turned off for your Portal account.",
            )
            message = "Two-step verification is off."
            if _is_htmx():
                return _fragments(("auth/_mfa.html", _mfa_context(user)), message=message)
            flash(message, "success")
            return redirect(_account_url("mfa"))
    user = _fresh_user()
    if _is_htmx():
        return _fragments(("auth/_mfa.html", _mfa_context(user, disable_form=form)), status=422)
    return _account_page(422, disable_form=form)


# -- sessions and devices ----------------------------------------------------------------------
def _signed_out_here() -> Response:
    logout_user()
    session.clear()
    flash("You have signed out.", "info")
    return _leave(url_for("auth.login"))


@bp.post("/sessions/<kind>/<ident>/revoke")
@login_required()
def revoke_session(kind: str, ident: str) -> Response:
    actor = current_actor()
    if kind == "web":
        if not is_public_id("session", ident):
            abort(404)
        revoked = sessions.revoke_session(make_uow(), actor=actor, session_id=ident)
        if revoked == current_user.session_id:
            return _signed_out_here()
    elif kind == "api":
        try:
            family = uuid.UUID(ident)
        except ValueError:
            abort(404)
        sessions.revoke_family(make_uow(), actor=actor, family_id=family)
    else:
        abort(404)
    message = "That session is signed out."
    if _is_htmx():
        return _fragments(("auth/_sessions.html", {"sessions": _session_rows()}), message=message)
    flash(message, "success")
    return redirect(_account_url("sessions"))


@bp.post("/sessions/revoke-others")
@login_required()
def revoke_other_sessions() -> Response:
    sessions.revoke_all(
        make_uow(), actor=current_actor(), except_session_id=current_user.session_id
    )
    message = "Every other session and device is signed out."
    if _is_htmx():
        return _fragments(("auth/_sessions.html", {"sessions": _session_rows()}), message=message)
    flash(message, "success")
    return redirect(_account_url("sessions"))


#: Endpoints that need a signed-in user (an htmx request without one is sent to sign in).
_SIGNED_IN_ENDPOINTS = frozenset(
    {
        "auth.account",
        "auth.resend_verification",
        "auth.change_password",
        "auth.change_email",
        "auth.change_preferences",
        "auth.regenerate_recovery_codes",
        "auth.disable_mfa",
        "auth.revoke_session",
        "auth.revoke_other_sessions",
    }
)
