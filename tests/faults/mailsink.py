"""The customers' and operators' inbox for the fault suite: an SMTP server that takes every mail and appends one
JSON line per delivery (Message-ID, X-OMS-Order-Id, subject, recipients, when) to a file.

A process of its own, not a thread of the test: the test's event loop (channels, sources, faults) would otherwise
hold the GIL while the notification service waits for the server's every reply, and the suite would measure the
sink instead of the sender.

    python -m tests.faults.mailsink --port 18125 --out mails.jsonl
"""

from __future__ import annotations

import argparse
import email.parser
import json
import signal
import threading
import time

from aiosmtpd.controller import Controller


class Inbox:
    def __init__(self, path: str) -> None:
        self.out = open(path, "a", buffering=1)  # noqa: SIM115 - open for the life of the process

    async def handle_DATA(self, server, session, envelope) -> str:
        headers = email.parser.BytesHeaderParser().parsebytes(envelope.content)
        line = {
            "message_id": str(headers.get("Message-ID", "")),
            "order_id": headers.get("X-OMS-Order-Id"),
            "subject": str(headers.get("Subject", "")),
            "to": list(envelope.rcpt_tos),
            "at": time.time(),
        }
        # Written before the 250: a mail the sender counts as delivered is always in the file.
        self.out.write(json.dumps(line) + "\n")
        return "250 Message accepted for delivery"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    # The sender's domain check is not the sink's business; a name of its own avoids a DNS lookup per connection.
    controller = Controller(Inbox(args.out), hostname="127.0.0.1", port=args.port, server_hostname="faults-sink")
    controller.start()
    print("ready", flush=True)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    stop.wait()
    controller.stop()


if __name__ == "__main__":
    main()
