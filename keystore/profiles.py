"""Named Argon2id parameter profiles, after the RFC that defines them.

``RFC_9106_LOW_MEMORY`` is the default. ``INSECURE_FOR_TESTS_ONLY`` exists so test
suites stay fast; nothing in this package ever picks it by default.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = [
    "INSECURE_FOR_TESTS_ONLY",
    "MAX_MEMORY_KIB",
    "MAX_PARALLELISM",
    "MAX_TIME_COST",
    "RFC_9106_HIGH_MEMORY",
    "RFC_9106_LOW_MEMORY",
    "KdfParameters",
    "by_name",
]


#: The costliest parameters accepted, when creating a vault and when reading a header.
MAX_TIME_COST = 16
MAX_MEMORY_KIB = 2 * 1024 * 1024
MAX_PARALLELISM = 64


@dataclass(frozen=True, slots=True)
class KdfParameters:
    """Argon2id cost parameters, stored in the vault header beside the salt.

    Attributes:
        time_cost: passes over memory (t).
        memory_cost: memory in KiB (m).
        parallelism: lanes (p).
        name: the profile's name, for reports only (not stored).
    """

    time_cost: int
    memory_cost: int
    parallelism: int
    name: str = "custom"

    def __post_init__(self) -> None:
        for field_name in ("time_cost", "memory_cost", "parallelism"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise TypeError(f"{field_name} must be an int")
            if not 1 <= value <= 0xFFFFFFFF:
                raise ValueError(f"{field_name} must be between 1 and 2**32-1")
        if self.memory_cost < 8 * self.parallelism:
            raise ValueError("memory_cost must be at least 8 KiB per lane (Argon2 minimum)")
        # Upper bounds: the parameters are read back from a file anyone with write access
        # can edit, and t or m near 2**32 would make unlock run for days or exhaust memory.
        if (
            self.time_cost > MAX_TIME_COST
            or self.memory_cost > MAX_MEMORY_KIB
            or self.parallelism > MAX_PARALLELISM
        ):
            raise ValueError(
                f"KDF parameters beyond the accepted maximum (t <= {MAX_TIME_COST}, "
                f"m <= {MAX_MEMORY_KIB} KiB, p <= {MAX_PARALLELISM})"
            )

    def same_cost(self, other: KdfParameters) -> bool:
        """Whether two parameter sets cost the same (names are ignored)."""
        return (self.time_cost, self.memory_cost, self.parallelism) == (
            other.time_cost,
            other.memory_cost,
            other.parallelism,
        )


#: RFC 9106 §4, second recommended option: t=3, m=64 MiB, p=4.  The default.
RFC_9106_LOW_MEMORY = KdfParameters(3, 64 * 1024, 4, "RFC_9106_LOW_MEMORY")
#: RFC 9106 §4, first recommended option: t=1, m=2 GiB, p=4.
RFC_9106_HIGH_MEMORY = KdfParameters(1, 2 * 1024 * 1024, 4, "RFC_9106_HIGH_MEMORY")
#: The cheapest parameters Argon2 accepts.  Tests only: offers no protection.
INSECURE_FOR_TESTS_ONLY = KdfParameters(1, 8, 1, "INSECURE_FOR_TESTS_ONLY")

_PROFILES = {
    p.name: p for p in (RFC_9106_LOW_MEMORY, RFC_9106_HIGH_MEMORY, INSECURE_FOR_TESTS_ONLY)
}


def by_name(name: str) -> KdfParameters:
    """Return the profile called ``name`` (e.g. ``"RFC_9106_LOW_MEMORY"``).

    Raises:
        ValueError: no profile has that name.
    """
    try:
        return _PROFILES[name]
    except KeyError:
        choices = sorted(_PROFILES)
        raise ValueError(f"unknown KDF profile {name!r}; choose one of {choices}") from None
