"""Run the notifications service: `python -m oms_notifications`."""

from oms_notifications.app import service

if __name__ == "__main__":
    service.run()
