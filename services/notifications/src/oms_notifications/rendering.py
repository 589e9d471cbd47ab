"""Turning a Notice into the words a person reads: Jinja2 templates in templates/<template>/, one file each for the
subject, the plain-text body and the HTML body. HTML is autoescaped (customer names and addresses are input from
the outside); a value a template names but the notice lacks is an error, never a silent blank.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal

import jinja2

from .domain import Notice

# The longest subject notification events can carry.
MAX_SUBJECT_LENGTH = 300

_CENTS = Decimal("0.01")


def money(amount: Decimal, currency: str) -> str:
    """`19.99 EUR`: two decimals at least, every decimal the OMS holds at most (it keeps up to four)."""
    if amount.as_tuple().exponent > -2:  # type: ignore[operator]
        amount = amount.quantize(_CENTS)
    return f"{amount:,f} {currency}"


def timestamp(at: datetime) -> str:
    return at.strftime("%Y-%m-%d %H:%M UTC")


_environment = jinja2.Environment(
    loader=jinja2.PackageLoader("oms_notifications", "templates"),
    autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default_for_string=False, default=False),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    # Templates ship with the package: no need to stat their files on every render.
    auto_reload=False,
)
_environment.filters["money"] = money
_environment.filters["timestamp"] = timestamp


@dataclass(frozen=True, slots=True)
class Rendered:
    notice: Notice
    subject: str
    text: str
    html: str


def render(notice: Notice) -> Rendered:
    values = {**notice.values, "recipient_name": notice.recipient_name, "locale": notice.locale}
    subject = _environment.get_template(f"{notice.template.value}/subject.txt").render(values)
    return Rendered(
        notice=notice,
        # A header is one line: whatever the template's layout, the subject is folded into single spaces.
        subject=" ".join(subject.split())[:MAX_SUBJECT_LENGTH],
        text=_environment.get_template(f"{notice.template.value}/body.txt").render(values),
        html=_environment.get_template(f"{notice.template.value}/body.html").render(values),
    )
