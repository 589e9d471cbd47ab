"""Value types every contract shares: money, quantities, codes, times.

Each type validates strictly (a channel that sends `"quantity": "2"` or `"unit_price": 19.99` is told so) and
publishes a precise JSON Schema, because outsiders build against the checked-in schemas.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime
from decimal import Decimal
from typing import Annotated, Any

import pycountry
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    StrictInt,
    WithJsonSchema,
)
from pydantic.networks import validate_email

# ISO 4217 codes that are no money a customer can pay with: an order or a payment in them is refused. Listed by name
# rather than by pattern, because X-codes include real currencies (XAF, XOF, XCD, XPF, XCG).
NON_TENDER_CURRENCIES = frozenset(
    {
        # precious metals, priced per troy ounce
        "XAU",  # gold
        "XAG",  # silver
        "XPT",  # platinum
        "XPD",  # palladium
        # units of account of institutions, never in anyone's purse
        "XBA",  # European Composite Unit (EURCO)
        "XBB",  # European Monetary Unit (E.M.U.-6)
        "XBC",  # European Unit of Account 9 (E.U.A.-9)
        "XBD",  # European Unit of Account 17 (E.U.A.-17)
        "XDR",  # IMF special drawing right
        "XSU",  # SUCRE of the ALBA countries
        "XUA",  # African Development Bank unit of account
        "XAD",  # Arab Monetary Fund accounting dinar
        # fund codes: indexed or settlement units beside a country's currency
        "BOV",  # Bolivian Mvdol
        "CHE",  # WIR euro
        "CHW",  # WIR franc
        "CLF",  # Chilean Unidad de Fomento
        "COU",  # Colombian Unidad de Valor Real
        "MXV",  # Mexican Unidad de Inversión
        "USN",  # US dollar, next day
        "USS",  # US dollar, same day (withdrawn)
        "UYI",  # Uruguay peso en unidades indexadas
        "UYW",  # Uruguayan Unidad Previsional
        # reserved
        "XTS",  # for testing
        "XXX",  # no currency involved
    }
)
CURRENCIES = frozenset(c.alpha_3 for c in pycountry.currencies) - NON_TENDER_CURRENCIES
COUNTRIES = frozenset(c.alpha_2 for c in pycountry.countries)

_MONEY = re.compile(r"^(0|[1-9][0-9]*)(\.[0-9]{1,4})?$")


def _money(value: Any) -> Decimal:
    # Strings only: a JSON float has already lost the cents we are asked to keep.
    if isinstance(value, Decimal):
        return value
    if not isinstance(value, str):
        raise ValueError('money must be a decimal string such as "19.99", not a number')
    if not _MONEY.match(value):
        raise ValueError('money must be a non-negative decimal string with at most 4 decimals, such as "19.99"')
    return Decimal(value)


def _currency(value: str) -> str:
    if value in NON_TENDER_CURRENCIES:
        raise ValueError(f"{value!r} is an ISO 4217 code but not a currency an order can be paid in")
    if value not in CURRENCIES:
        raise ValueError(f"{value!r} is not an ISO 4217 currency code")
    return value


def _country(value: str) -> str:
    if value not in COUNTRIES:
        raise ValueError(f"{value!r} is not an ISO 3166-1 alpha-2 country code")
    return value


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def _no_nul(value: str) -> str:
    # PostgreSQL's text and jsonb cannot hold it: refused here, with the field, rather than by the database.
    if "\x00" in value:
        raise ValueError("must not contain the NUL character (\\u0000)")
    return value


Money = Annotated[
    Decimal,
    BeforeValidator(_money),
    PlainSerializer(lambda d: format(d, "f"), return_type=str),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": _MONEY.pattern,
            "description": "Non-negative decimal amount as a string, never a float",
            "examples": ["19.99"],
        }
    ),
]
# At most a billion units: more than any line or receipt holds, and within what every store's columns hold (a larger
# number was valid here and then failed at the database, so it was dead-lettered instead of rejected by field).
MAX_QUANTITY = 1_000_000_000


@functools.lru_cache(maxsize=65_536)
def _email(value: str) -> str:
    """Pydantic's EmailStr check (email-validator: syntax and IDNA, no DNS) and its normalised address, remembered:
    the check is the dearest part of reading an event that names a customer, and an order's events name the same
    customer again and again as they pass through a service. A refused address raises and is not remembered."""
    return validate_email(value)[1]


# What pydantic's EmailStr accepts, refuses (with the same error) and makes of an address; the same JSON Schema.
Email = Annotated[str, AfterValidator(_email), WithJsonSchema({"type": "string", "format": "email"})]

Quantity = Annotated[
    StrictInt,
    Field(gt=0, le=MAX_QUANTITY, description="Number of units, an integer from 1 to 1,000,000,000"),
]
Count = Annotated[StrictInt, Field(ge=0)]
CurrencyCode = Annotated[
    str,
    AfterValidator(_currency),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": "^[A-Z]{3}$",
            "description": "ISO 4217 currency code of legal tender (not a metal, fund, testing or no-currency code "
            "such as XAU, CLF, XTS, XXX)",
        }
    ),
]
CountryCode = Annotated[
    str,
    AfterValidator(_country),
    WithJsonSchema({"type": "string", "pattern": "^[A-Z]{2}$", "description": "ISO 3166-1 alpha-2 country code"}),
]
# Validated into UTC, so pydantic-core writes it as RFC 3339 with "Z" itself: a serializer of our own was a Python
# call per time in every event written, 40 % of the order service's `model_dump_json` at 300 orders/s.
UtcDatetime = Annotated[
    AwareDatetime,
    AfterValidator(_utc),
    WithJsonSchema({"type": "string", "format": "date-time", "description": "RFC 3339 time with offset; sent as UTC"}),
]
NonEmptyStr = Annotated[str, Field(min_length=1, max_length=200), AfterValidator(_no_nul)]
Text = Annotated[str, Field(max_length=2000), AfterValidator(_no_nul)]
Sku = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^\S(.*\S)?$")]
LineId = Annotated[str, Field(min_length=1, max_length=64)]
# A source code becomes part of a Kafka topic name (oms.fulfillment.requests.{code}.v1), so only topic-safe
# characters are allowed.
SourceCode = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9_-]*$")]
Latitude = Annotated[float, Field(ge=-90, le=90)]
Longitude = Annotated[float, Field(ge=-180, le=180)]


def utc_now() -> datetime:
    return datetime.now(UTC)


class Contract(BaseModel):
    """Base of every event payload: unknown fields are ignored so that adding a field never breaks a reader."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)
