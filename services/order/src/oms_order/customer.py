"""The customer's "wait or cancel" page, reached from the backorder notice's signed link.

No bearer token: the link's signature is the credential (`oms_runtime.links`, HMAC-SHA256 over the order, the lines
and the expiry, with OMS_CUSTOMER_LINK_KEY, the key notifications signs with). `GET` shows what of those lines still
waits for stock, live (with its place in the queue and expected date from inventory); `POST` to the same address
cancels what of them still waits, with the customer as the actor. A forged or altered link gets 403, an expired one
410, and nothing changes; the same link posted again applies once (the cancellation's id comes from the signature).
English or German, by the order's customer locale."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

from fastapi import APIRouter, Request, status
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, select_autoescape

from oms_runtime import links

from . import backorders, domain, store, writes
from .settings import OrderSettings

router = APIRouter(tags=["customer"])

# A link's cancellation id: uuid5 of the order and the link's signature, so the same link applies once.
LINK_CANCELLATIONS = uuid.UUID("9c7b3a52-0f1e-4f4b-8d3e-5a2b6c1d7e90")
REASON = "cancelled by the customer from the backorder notice"

_templates = Environment(loader=PackageLoader("oms_order", "templates"), autoescape=select_autoescape(["html"]))

_MONTHS = {
    "en": [
        "January",
        "February",
        "March",
        "April",
        "May",
        "June",
        "July",
        "August",
        "September",
        "October",
        "November",
        "December",
    ],
    "de": [
        "Januar",
        "Februar",
        "März",
        "April",
        "Mai",
        "Juni",
        "Juli",
        "August",
        "September",
        "Oktober",
        "November",
        "Dezember",
    ],
}

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "title": "Items waiting for stock",
        "order": "Order",
        "intro": "These items are not in stock yet. We will ship them as soon as they arrive, or you can cancel them "
        "here.",
        "item": "Item",
        "quantity": "Quantity",
        "position": "Place in the queue",
        "expected": "Expected",
        "unknown": "not known yet",
        "no_places": "We cannot show the place in the queue right now; the items still wait.",
        "gone": "{quantity} x {sku}: no longer waiting (on its way, or cancelled).",
        "cancel_intro": "Cancel the items above? They will not be shipped and you get your money back for them.",
        "cancel": "Cancel these items",
        "cancelled": "Cancelled: {items}.",
        "refund": "We refund {amount} {currency}; an e-mail confirms it.",
        "nothing_waits": "Nothing of these items waits any more: they are on their way or cancelled already.",
        "forged": "This link is not valid. Please use the link from our e-mail exactly as it is, or contact customer "
        "service.",
        "expired": "This link has expired. Please contact customer service if you still want to cancel these items.",
        "unknown_order": "We could not find this order. Please contact customer service.",
        "not_configured": "Links are not configured on this service. Please contact customer service.",
    },
    "de": {
        "title": "Artikel, die auf Ware warten",
        "order": "Bestellung",
        "intro": "Diese Artikel sind noch nicht auf Lager. Wir versenden sie, sobald sie eintreffen, oder Sie "
        "stornieren sie hier.",
        "item": "Artikel",
        "quantity": "Menge",
        "position": "Platz in der Warteschlange",
        "expected": "Erwartet",
        "unknown": "noch unbekannt",
        "no_places": "Den Platz in der Warteschlange können wir gerade nicht zeigen; die Artikel warten weiter.",
        "gone": "{quantity} x {sku}: wartet nicht mehr (unterwegs oder storniert).",
        "cancel_intro": "Die Artikel oben stornieren? Sie werden nicht versandt, und Sie erhalten Ihr Geld dafür "
        "zurück.",
        "cancel": "Diese Artikel stornieren",
        "cancelled": "Storniert: {items}.",
        "refund": "Wir erstatten {amount} {currency}; eine E-Mail bestätigt es.",
        "nothing_waits": "Von diesen Artikeln wartet keiner mehr: Sie sind unterwegs oder bereits storniert.",
        "forged": "Dieser Link ist ungültig. Bitte verwenden Sie den Link aus unserer E-Mail unverändert, oder wenden "
        "Sie sich an den Kundenservice.",
        "expired": "Dieser Link ist abgelaufen. Bitte wenden Sie sich an den Kundenservice, wenn Sie die Artikel "
        "noch stornieren möchten.",
        "unknown_order": "Wir konnten diese Bestellung nicht finden. Bitte wenden Sie sich an den Kundenservice.",
        "not_configured": "Links sind bei diesem Dienst nicht eingerichtet. Bitte wenden Sie sich an den "
        "Kundenservice.",
    },
}

_PAGES = {
    200: {"description": "The page: what waits, or what was cancelled"},
    403: {"description": "A forged or altered link: nothing changes"},
    404: {"description": "No such order (or none of the link's lines)"},
    409: {"description": "Nothing of these items waits any more: nothing changes"},
    410: {"description": "An expired link: nothing changes"},
    503: {"description": "Links are not configured (OMS_CUSTOMER_LINK_KEY is not set)"},
}
_HTML = {code: {**answer, "content": {"text/html": {}}} for code, answer in _PAGES.items()}
# The link's signature is the credential: its query parameters, read raw so that a missing or altered one answers the
# customer's 403 page, not a JSON 422, and documented here.
_SIGNED_LINK = {
    "parameters": [
        {"name": name, "in": "query", "required": True, "description": text, "schema": {"type": kind}}
        for name, kind, text in (
            ("lines", "string", "The link's line ids, comma-separated"),
            ("expires", "integer", "When the link expires, Unix seconds"),
            ("sig", "string", "HMAC-SHA256 of the order, the lines and the expiry (OMS_CUSTOMER_LINK_KEY)"),
        )
    ]
}


def language(locale: str | None) -> str:
    """German for de, de-DE, de_AT ...; English for anything else."""
    return "de" if (locale or "").lower()[:2] == "de" else "en"


def _date(day: date | None, lang: str) -> str | None:
    if day is None:
        return None
    return f"{day.day}{'.' if lang == 'de' else ''} {_MONTHS[lang][day.month - 1]} {day.year}"


def _money(amount: Decimal, lang: str) -> str:
    text = f"{amount:,.2f}"
    return text.translate(str.maketrans(",.", ".,")) if lang == "de" else text


def _page(code: int, lang: str, **values: Any) -> HTMLResponse:
    context: dict[str, Any] = {"waiting": [], "gone": [], "problems": [], "can_cancel": False, "done": None}
    context.update(values)
    html = _templates.get_template("backorders.html").render(lang=lang, t=TEXTS[lang], **context)
    return HTMLResponse(html, status_code=code, headers={"Cache-Control": "no-store"})


def _problem(code: int, what: str, lang: str | None = None) -> HTMLResponse:
    """An error page. Before the order is known (a forged link), it speaks both languages."""
    langs = [lang] if lang else ["en", "de"]
    return _page(code, langs[0], problems=[TEXTS[x][what] for x in langs])


async def _checked(request: Request, order_id: uuid.UUID) -> tuple[list[str], dict[str, Any]] | HTMLResponse:
    """The link's lines and the order, or the page that says why not."""
    settings: OrderSettings = request.app.state.service.settings
    key = settings.link_key
    if key is None:
        return _problem(status.HTTP_503_SERVICE_UNAVAILABLE, "not_configured")
    verdict, lines = links.verify(key, order_id, dict(request.query_params), datetime.now(UTC))
    if verdict is links.LinkCheck.forged:
        return _problem(status.HTTP_403_FORBIDDEN, "forged")
    async with request.app.state.service.database.connect() as conn:
        order = await store.order_view(conn, order_id)
    lang = language((order or {}).get("customer", {}).get("locale"))
    if verdict is links.LinkCheck.expired:
        return _problem(status.HTTP_410_GONE, "expired", lang)
    known = {line["line_id"] for line in (order or {}).get("lines", [])}
    if order is None or not known & set(lines):
        return _problem(status.HTTP_404_NOT_FOUND, "unknown_order", lang)
    return [line for line in lines if line in known], order


@router.get(
    "/customer/orders/{order_id}/backorders",
    response_class=HTMLResponse,
    summary="The customer's page of items waiting for stock, with a form to cancel them (signed link, no token)",
    responses=_HTML,
    openapi_extra=_SIGNED_LINK,
)
async def wait_or_cancel(order_id: uuid.UUID, request: Request) -> HTMLResponse:
    checked = await _checked(request, order_id)
    if isinstance(checked, HTMLResponse):
        return checked
    line_ids, order = checked
    lang = language(order["customer"].get("locale"))
    named = [line for line in order["lines"] if line["line_id"] in line_ids]
    waiting = [line for line in named if line["quantities"]["backordered"]]
    places: dict[str, backorders.QueuePlace] = {}
    places_missing = False
    if waiting:
        settings: OrderSettings = request.app.state.service.settings
        token = settings.inventory_token
        try:
            places = await backorders.places(
                settings.inventory_url,
                order_id,
                f"Bearer {token.get_secret_value()}" if token else None,
                settings.inventory_timeout_s,
            )
        except backorders.Unavailable:
            places_missing = True
    return _page(
        status.HTTP_200_OK,
        lang,
        order_number=order["external_order_id"],
        waiting=[
            {
                "sku": line["sku"],
                "quantity": line["quantities"]["backordered"],
                "position": places[line["line_id"]].position if line["line_id"] in places else None,
                "expected": _date(places[line["line_id"]].expected_date, lang) if line["line_id"] in places else None,
            }
            for line in waiting
        ],
        places_missing=places_missing,
        gone=[
            TEXTS[lang]["gone"].format(quantity=line["quantity"], sku=line["sku"])
            for line in named
            if not line["quantities"]["backordered"]
        ],
        can_cancel=bool(waiting),
        action=f"{request.url.path}?{request.url.query}",
        problems=[] if waiting else [TEXTS[lang]["nothing_waits"]],
    )


@router.post(
    "/customer/orders/{order_id}/backorders",
    response_class=HTMLResponse,
    summary="Cancel what of the link's items still waits for stock, as the customer (signed link, no token)",
    responses=_HTML,
    openapi_extra=_SIGNED_LINK,
)
async def cancel_waiting(order_id: uuid.UUID, request: Request) -> HTMLResponse:
    checked = await _checked(request, order_id)
    if isinstance(checked, HTMLResponse):
        return checked
    line_ids, view = checked
    lang = language(view["customer"].get("locale"))
    customer = view["customer"].get("id") or view["customer"].get("email")
    cancellation_id = uuid.uuid5(LINK_CANCELLATIONS, f"{order_id}:{request.query_params['sig']}")

    def cancel(order: domain.Order) -> domain.Cancellation:
        request_ = domain.CancellationRequest(
            cancellation_id=cancellation_id,
            requested_by=f"customer:{customer}",
            via="link",
            reason=REASON,
            lines=tuple(domain.LineRequest(line_id) for line_id in line_ids),
            only=domain.LineState.backordered,
        )
        actor = f"customer:{customer}"
        return order.request_cancellation(request_, writes.cause(order, actor, "link"))

    record = await writes.change(request.app.state.service, order_id, cancel)
    if record.status is domain.CancellationStatus.refused:
        return _problem(status.HTTP_409_CONFLICT, "nothing_waits", lang)
    texts = TEXTS[lang]
    items = ", ".join(f"{x.cancelled} x {x.sku}" for x in record.lines.values() if x.cancelled)
    done = texts["cancelled"].format(items=items)
    if record.refunded:
        done += " " + texts["refund"].format(amount=_money(record.refunded, lang), currency=view["currency"])
    return _page(status.HTTP_200_OK, lang, order_number=view["external_order_id"], done=done)
