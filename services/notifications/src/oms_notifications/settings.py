from typing import Annotated, ClassVar

from pydantic import Field, SecretStr

from oms_runtime import ServiceSettings, service_field

PositiveInt = Annotated[int, Field(ge=1)]
Seconds = Annotated[float, Field(gt=0)]


class NotificationsSettings(ServiceSettings):
    service: ClassVar[str] = "notifications"
    database_url: str = service_field(
        "notifications", "database_url", "postgresql+asyncpg://oms:oms@127.0.0.1:5432/oms_notifications"
    )
    http_port: int = service_field("notifications", "http_port", 8084)

    # The SMTP server every mail goes through (a mail catcher on 1025 in local runs).
    smtp_host: str = service_field("notifications", "smtp_host", "127.0.0.1")
    smtp_port: int = service_field("notifications", "smtp_port", 1025)
    smtp_username: str | None = service_field("notifications", "smtp_username", None)
    smtp_password: SecretStr | None = service_field("notifications", "smtp_password", None)
    smtp_starttls: bool = service_field("notifications", "smtp_starttls", False)
    smtp_timeout: Seconds = service_field("notifications", "smtp_timeout", 10.0)
    mail_from: str = service_field("notifications", "mail_from", "OMS <orders@oms.local>")

    # Retries: 2^attempts seconds between tries, capped; a message still undelivered after max_attempts fails.
    max_attempts: PositiveInt = service_field("notifications", "max_attempts", 8)
    retry_cap_seconds: Seconds = service_field("notifications", "retry_cap_seconds", 900.0)
    # How many due messages one sender pass locks, and over how many SMTP connections it sends them at once.
    send_batch_size: PositiveInt = service_field("notifications", "send_batch_size", 100)
    smtp_connections: PositiveInt = service_field("notifications", "smtp_connections", 4)
