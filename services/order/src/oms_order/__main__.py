"""Run the order service: `python -m oms_order`."""

from oms_order.app import service

if __name__ == "__main__":
    service.run()
