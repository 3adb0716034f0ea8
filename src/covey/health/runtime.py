"""What the assembly wires into :class:`~covey.health.Health` (not for applications)."""

from covey.health._health import HEALTH_LOOP, HealthParts

__all__ = ["HEALTH_LOOP", "HealthParts"]
