"""Every table, imported in one place so the metadata is complete (tests, autogenerate)."""

from tidings.db.base import Base
from tidings.db.leases import Lease
from tidings.events.models import Event, EventStream, ProcessedEvent
from tidings.jobs.models import Job, PeriodicSchedule

__all__ = ["Base", "Event", "EventStream", "Job", "Lease", "PeriodicSchedule", "ProcessedEvent"]
