"""The notifications service's metrics (oms_notifications.metrics) from its real sender over a real SMTP server:
mails counted by template and outcome, how long after its event each mail left, and the confirmation as the flow's
customer_notified step."""

from __future__ import annotations

from oms_contracts.topics import ORDER_EVENTS
from oms_notifications.domain import RetryPolicy
from oms_notifications.sender import Sender, SmtpServer
from oms_runtime import metrics
from oms_runtime.testing import deliver


def mails(outcome: str) -> float:
    return metrics.sample(
        "oms_notifications_mails_total", {"oms_notification_template": "order_confirmation", "oms_outcome": outcome}
    )


def confirmations_notified() -> float:
    return metrics.sample("oms_order_flow_duration_seconds_count", {"oms_flow_step": "customer_notified"})


async def test_a_sent_confirmation_counts_as_sent_and_as_the_customer_notified(
    service, pg, order_accepted, smtp_server
):
    _, port = smtp_server()
    before = (mails("sent"), confirmations_notified())
    await deliver(service, ORDER_EVENTS, order_accepted("M-1"), order_accepted("M-2"))

    assert await Sender(service.database, SmtpServer(port=port, timeout=5.0)).send_due() == 2

    assert (mails("sent"), confirmations_notified()) == (before[0] + 2, before[1] + 2)
    delays = metrics.sample(
        "oms_notifications_delay_seconds_count", {"oms_notification_template": "order_confirmation"}
    )
    assert delays >= 2


async def test_refused_mails_count_as_failed_or_retry_and_never_as_notified(service, pg, order_accepted, smtp_server):
    _, port = smtp_server(refuse_with="550 5.1.1 No such user here")
    before = (mails("failed"), mails("retry"), confirmations_notified())
    await deliver(service, ORDER_EVENTS, order_accepted("M-3"))
    await Sender(service.database, SmtpServer(port=port, timeout=5.0), policy=RetryPolicy(max_attempts=8)).send_due()
    _, port = smtp_server(refuse_with="451 4.3.0 Try again later")
    await deliver(service, ORDER_EVENTS, order_accepted("M-4"))
    await Sender(service.database, SmtpServer(port=port, timeout=5.0), policy=RetryPolicy(max_attempts=8)).send_due()

    assert (mails("failed"), mails("retry"), confirmations_notified()) == (before[0] + 1, before[1] + 1, before[2])
