"""The overlay's reason codes; they live in the base layer (runtime/reasons.py) so that the trust
core (manifest enrolment) can name them without importing the overlay."""
from conclave.runtime.reasons import DeviceReason, OverlayReason

__all__ = ["DeviceReason", "OverlayReason"]
