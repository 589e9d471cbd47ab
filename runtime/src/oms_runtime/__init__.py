"""Plumbing the four OMS services share. Domain logic never lives here."""

from .consumer import Incoming, Invalid, Only, Refused, Transaction
from .database import Database, add_messaging_tables
from .http import Principal, require_role
from .service import Service
from .settings import ApiGrant, Role, ServiceSettings, service_field

__all__ = [
    "ApiGrant",
    "Database",
    "Incoming",
    "Invalid",
    "Only",
    "Principal",
    "Refused",
    "Role",
    "Service",
    "ServiceSettings",
    "Transaction",
    "add_messaging_tables",
    "require_role",
    "service_field",
]
