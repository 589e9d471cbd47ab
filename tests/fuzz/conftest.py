"""The fuzzed events go through the same running system as tests/e2e: its fixtures, shared rather than copied."""

from ..e2e.conftest import network, system  # noqa: F401
