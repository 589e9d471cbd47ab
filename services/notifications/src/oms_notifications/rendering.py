"""Turning a Notice into the words a person reads, in the customer's language: Jinja2 templates in
templates/<language>/<template>/, one file each for the subject, the plain-text body and the HTML body. HTML is
autoescaped (customer names, addresses and SKUs are input from the outside); a value a template names but the notice
lacks is an error, never a silent blank. Dates and amounts are written the way each language writes them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import jinja2

from .domain import Language, Notice, Template

# The longest subject notification events can carry.
MAX_SUBJECT_LENGTH = 300

_CENTS = Decimal("0.01")

# Written out here rather than taken from the process's locale (which is usually C, and never ours to change).
_WEEKDAYS = {
    Language.en: ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"),
    Language.de: ("Montag", "Dienstag", "Mittwoch", "Donnerstag", "Freitag", "Samstag", "Sonntag"),
}
_MONTHS = {
    Language.en: (
        "January", "February", "March", "April", "May", "June",
        "July", "August", "September", "October", "November", "December",
    ),
    Language.de: (
        "Januar", "Februar", "März", "April", "Mai", "Juni",
        "Juli", "August", "September", "Oktober", "November", "Dezember",
    ),
}  # fmt: skip


def money(amount: Decimal, currency: str, language: Language = Language.en) -> str:
    """`1,234.50 EUR` in English, `1.234,50 EUR` in German: two decimals at least, every decimal the OMS holds at
    most (it keeps up to four)."""
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]
        amount = amount.quantize(_CENTS)
    written = f"{amount:,f}"
    if language is Language.de:
        written = written.translate(str.maketrans(",.", ".,"))
    return f"{written} {currency}"


def long_date(day: date, language: Language = Language.en) -> str:
    """`Tuesday, 1 December 2026` in English, `Dienstag, 1. Dezember 2026` in German. A time is shown by its
    (UTC) date."""
    if isinstance(day, datetime):
        day = day.date()
    weekday, month = _WEEKDAYS[language][day.weekday()], _MONTHS[language][day.month - 1]
    if language is Language.de:
        return f"{weekday}, {day.day}. {month} {day.year}"
    return f"{weekday}, {day.day} {month} {day.year}"


def utc_time(moment: datetime, language: Language = Language.en) -> str:
    """`Saturday, 28 November 2026, 09:00 UTC`: a moment for the operators, who compare it with their logs."""
    moment = moment.astimezone(UTC)
    return f"{long_date(moment, language)}, {moment:%H:%M} UTC"


@jinja2.pass_context
def _money_filter(context: jinja2.runtime.Context, amount: Decimal, currency: str) -> str:
    return money(amount, currency, Language(context["language"]))


@jinja2.pass_context
def _date_filter(context: jinja2.runtime.Context, day: date) -> str:
    return long_date(day, Language(context["language"]))


@jinja2.pass_context
def _time_filter(context: jinja2.runtime.Context, moment: datetime) -> str:
    return utc_time(moment, Language(context["language"]))


class _Environment(jinja2.Environment):
    """A notice's values are dicts (of its lines, parcels, address): `line.sku` finds the key at once. Jinja2 looks for
    an attribute first and catches the AttributeError for every one, a sixth of a render's time."""

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


_environment = _Environment(
    loader=jinja2.PackageLoader("oms_notifications", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    # Templates ship with the package: no need to stat their files on every render.
    auto_reload=False,
)
_environment.filters["money"] = _money_filter
_environment.filters["long_date"] = _date_filter
_environment.filters["utc_time"] = _time_filter


@dataclass(frozen=True, slots=True)
class Rendered:
    notice: Notice
    subject: str
    text: str
    html: str


@functools.cache
def _templates(language: Language, template: Template) -> tuple[jinja2.Template, jinja2.Template, jinja2.Template]:
    """The subject, plain-text and HTML templates of a message in a language, looked up once."""
    folder = f"{language.value}/{template.value}"
    return tuple(_environment.get_template(f"{folder}/{name}") for name in ("subject.txt", "body.txt", "body.html"))


def render(notice: Notice) -> Rendered:
    language = notice.language
    values: dict[str, Any] = {**notice.values, "recipient_name": notice.recipient_name, "language": language}
    subject, text, html = _templates(language, notice.template)
    return Rendered(
        notice=notice,
        # A header is one line: whatever the template's layout, the subject is folded into single spaces.
        subject=" ".join(subject.render(values).split())[:MAX_SUBJECT_LENGTH],
        text=text.render(values),
        html=html.render(values),
    )
