"""Refusals the console can show to its user as they are.

Every message is plain text written for a technician, DSL or headteacher; views escape it
like any other text. `field` names the form field at fault, when there is one.
"""

from __future__ import annotations


class ServiceError(Exception):
    """A request the service will not carry out, with a message fit for the user."""

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class NotFound(ServiceError):
    """The record does not exist at this site."""


class Forbidden(ServiceError):
    """The acting user lacks the role this step needs."""


class InvalidInput(ServiceError):
    """A form field is missing or malformed; `field` says which."""


class InvalidTransition(ServiceError):
    """The record is not in a state that allows this step (e.g. approving a declined request)."""


class LockedTarget(ServiceError):
    """The site is hard-blocked (illegal or circumvention): it can never be requested or excepted."""


class RateLimited(ServiceError):
    """Too many requests from the same device or address; try again later."""


class ProposalChanged(InvalidTransition):
    """What the signer read is no longer what would be done (a technician changed it meanwhile)."""
