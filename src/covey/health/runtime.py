"""What the assembly wires into :class:`~covey.health.Health` (not for applications)."""

from covey.health._health import HEALTH_LOOP, HealthParts
from covey.health._runners_report import (
    ENTITIES_KEY,
    EntityCounts,
    EntityReport,
    active_entities,
    read_entity_counts,
)

__all__ = [
    "ENTITIES_KEY",
    "EntityCounts",
    "EntityReport",
    "HEALTH_LOOP",
    "HealthParts",
    "active_entities",
    "read_entity_counts",
]
