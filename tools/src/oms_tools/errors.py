"""Expected failures and the exit codes the `oms` command ends with."""

from __future__ import annotations

OK = 0
FAILED = 1  # the request was made and refused, or did not finish (an HTTP error answer, a Kafka error)
INVALID = 2  # bad input: options, arguments, demo files (click's usage errors exit 2 as well)
UNREACHABLE = 3  # Kafka or an OMS service could not be reached


class ToolError(Exception):
    """A failure the user can act on: printed as one clear message, never as a traceback."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code
