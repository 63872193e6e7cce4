"""The forms of the sign-in and account pages (Flask-WTF: each carries the CSRF token).

Fields only check that something was entered; the services own every other rule (email
syntax, password policy, names) and their refusals are shown next to the field they name
(:func:`add_service_error`).
"""

from __future__ import annotations

from flask_wtf import FlaskForm
from wtforms import EmailField, HiddenField, PasswordField, SelectField, StringField
from wtforms.fields.choices import SelectChoice
from wtforms.validators import DataRequired, InputRequired

from portal.domain.errors import PortalError
from portal.domain.locale import LOCALES, time_zones


def _sentence(text: str) -> str:
    text = text.strip()
    if not text:
        return text
    text = text[0].upper() + text[1:]
    return text if text.endswith((".", "!", "?")) else text + "."


def add_service_error(form: FlaskForm, error: PortalError, *, default: str | None = None) -> None:
    """Show a service's refusal next to the field it names (its ``param``), else on the form."""
    message = _sentence(error.message)
    field = getattr(form, error.param, None) if error.param else None
    if field is None and default is not None:
        field = getattr(form, default, None)
    if field is not None and hasattr(field, "errors"):
        field.errors = [*field.errors, message]
    else:
        form.form_errors.append(message)


def _email(label: str = "Email address", autocomplete: str = "email") -> EmailField:
    return EmailField(
        label,
        validators=[DataRequired("Enter an email address.")],
        render_kw={"autocomplete": autocomplete, "maxlength": 254, "spellcheck": "false"},
    )


def _password(label: str, autocomplete: str, message: str = "Enter a password.") -> PasswordField:
    return PasswordField(
        label,
        validators=[InputRequired(message)],
        render_kw={"autocomplete": autocomplete, "maxlength": 128},
    )


def _new_password(label: str = "New password") -> PasswordField:
    return PasswordField(
        label,
        validators=[InputRequired("Choose a password.")],
        render_kw={"autocomplete": "new-password", "minlength": 8, "maxlength": 128},
    )


def _code() -> StringField:
    return StringField(
        "Code",
        validators=[DataRequired("Enter the code.")],
        render_kw={
            "autocomplete": "one-time-code",
            "inputmode": "text",
            "maxlength": 40,
            "spellcheck": "false",
            "autocapitalize": "off",
        },
    )


class RegisterForm(FlaskForm):
    first_name = StringField(
        "First name",
        validators=[DataRequired("Enter your first name.")],
        render_kw={"autocomplete": "given-name", "maxlength": 100},
    )
    last_name = StringField(
        "Last name",
        validators=[DataRequired("Enter your last name.")],
        render_kw={"autocomplete": "family-name", "maxlength": 100},
    )
    email = _email()
    password = _new_password("Password")
    password_confirmation = PasswordField(
        "Confirm password",
        validators=[InputRequired("Type the password again.")],
        render_kw={"autocomplete": "new-password", "maxlength": 128},
    )
    time_zone = HiddenField(render_kw={"data-browser-time-zone": ""})


class LoginForm(FlaskForm):
    email = _email()
    password = _password("Password", "current-password")
    next = HiddenField()
    #: The browser's IANA time zone (time-zone.js fills it): kept only while the user has none.
    time_zone = HiddenField(render_kw={"data-browser-time-zone": ""})


class PreferencesForm(FlaskForm):
    """Formats of numbers, money and dates, and the time zone of the pages."""

    locale = SelectField(
        "Number and date format",
        choices=[SelectChoice(code, label) for code, label in LOCALES.items()],
        validators=[DataRequired("Choose a format.")],
        validate_choice=False,  # the service refuses an unknown one, naming the field
    )
    time_zone = SelectField(
        "Time zone",
        choices=[SelectChoice(z, z.replace("_", " ")) for z in time_zones()],
        validators=[DataRequired("Choose a time zone.")],
        validate_choice=False,
        render_kw={"data-time-zone-select": ""},
    )


class SecondFactorForm(FlaskForm):
    code = _code()
    next = HiddenField()
    time_zone = HiddenField(render_kw={"data-browser-time-zone": ""})


class ConfirmTotpForm(FlaskForm):
    code = StringField(
        "Code from your app",
        validators=[DataRequired("Enter the 6-digit code your app shows.")],
        render_kw={
            "autocomplete": "one-time-code",
            "inputmode": "numeric",
            "maxlength": 8,
            "pattern": "[0-9 ]*",
        },
    )
    next = HiddenField()


class StartTotpForm(FlaskForm):
    """Start setting up an authenticator app. Staff without a second factor also give the
    one-time enrolment code an administrator made (the service says when it is needed)."""

    enrolment_code = StringField(
        "Enrolment code",
        render_kw={
            "autocomplete": "off",
            "inputmode": "text",
            "maxlength": 40,
            "spellcheck": "false",
            "autocapitalize": "off",
        },
    )
    next = HiddenField()


class ForgotForm(FlaskForm):
    email = _email()


class ResetForm(FlaskForm):
    password = _new_password()
    password_confirmation = PasswordField(
        "Confirm new password",
        validators=[InputRequired("Type the password again.")],
        render_kw={"autocomplete": "new-password", "maxlength": 128},
    )


class ChangePasswordForm(FlaskForm):
    current_password = _password(
        "Current password", "current-password", "Enter your current password."
    )
    password = _new_password()
    password_confirmation = PasswordField(
        "Confirm new password",
        validators=[InputRequired("Type the new password again.")],
        render_kw={"autocomplete": "new-password", "maxlength": 128},
    )


class ChangeEmailForm(FlaskForm):
    new_email = _email("New email address", "off")
    password = _password("Your password", "current-password", "Enter your password.")


class PasswordCheckForm(FlaskForm):
    """Re-authentication before regenerating recovery codes or turning the second factor off."""

    password = _password("Your password", "current-password", "Enter your password.")


#: Prefixes keep the ids and names of the account page's forms apart.
PREFIX = {
    "password": "pw",
    "email": "em",
    "codes": "rc",
    "disable": "off",
    "preferences": "pref",
}
