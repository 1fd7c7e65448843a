"""Global scheduler: instances of one topic share work through Redis (scheduler.py). Never imports paddle."""

from gateway.global_scheduler.local_engine import LocalEngine
from gateway.global_scheduler.origin import RequestStream
from gateway.global_scheduler.scheduler_errors import (
    QueueFull,
    RequestExpired,
    RequestLost,
    SchedulerUnavailable,
)
from gateway.global_scheduler.scheduler_instance import GlobalScheduler, SchedulerStats
from gateway.global_scheduler.scheduler_settings import GlobalSchedulerSettings, default_instance_id
from gateway.global_scheduler.store import check_reachable
from gateway.global_scheduler.work_items import Chunk, EnsembleInputs, WorkRequest

__all__ = [
    "Chunk",
    "EnsembleInputs",
    "LocalEngine",
    "GlobalScheduler",
    "GlobalSchedulerSettings",
    "QueueFull",
    "RequestExpired",
    "RequestLost",
    "RequestStream",
    "SchedulerStats",
    "SchedulerUnavailable",
    "WorkRequest",
    "check_reachable",
    "default_instance_id",
]
