"""Run the routing service: `python -m oms_routing`."""

from oms_routing.app import service

if __name__ == "__main__":
    service.run()
