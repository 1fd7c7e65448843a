"""Scheduler errors: `Overloaded` ones map to Triton UNAVAILABLE / HTTP 503, unchanged."""

from __future__ import annotations

from paddlellm.errors import EngineDead, EngineError, Overloaded


class SchedulerUnavailable(Overloaded):
    """Redis cannot be reached: raised at start-up (naming host:port), and fast by submits while down."""


class QueueFull(Overloaded):
    """This instance's queue holds `--scheduler-max-size` requests."""


class RequestExpired(Overloaded):
    """The request was not started within `--scheduler-ttl` seconds."""


class RequestLost(EngineError):
    """The scheduler's state for the request vanished (Redis restarted without persistence)."""


class CannotResume(EngineDead):
    """A request cut mid-stream reached an instance whose ensemble has no `resume_ids` input."""
