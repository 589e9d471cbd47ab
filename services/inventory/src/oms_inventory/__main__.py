"""Run the inventory service: `python -m oms_inventory`."""

from oms_inventory.app import service

if __name__ == "__main__":
    service.run()
