"""Plumbing the four OMS services share. Domain logic never lives here."""

from .consumer import Incoming, Invalid, Refused, Transaction
from .database import Database, add_messaging_tables
from .http import Principal
from .service import Service
from .settings import ServiceSettings, service_field

__all__ = [
    "Database",
    "Incoming",
    "Invalid",
    "Principal",
    "Refused",
    "Service",
    "ServiceSettings",
    "Transaction",
    "add_messaging_tables",
    "service_field",
]
