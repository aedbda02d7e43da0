"""Short role names for the linears of a transformer layer, shared by SVD, whitening and prehab."""

from collections.abc import Iterable

LINEAR_ROLES = ("q", "k", "v", "o", "up", "down", "gate")
DEFAULT_TARGETS = ("q", "k", "v", "o", "up", "down")


def check_targets(argument: str, targets: Iterable[str] | None) -> tuple[str, ...]:
    """Return `targets` as a tuple of distinct known role names (DEFAULT_TARGETS when None).

    Raises TypeError/ValueError naming `argument` for a bare string, unknown or repeated roles.
    """
    if targets is None:
        return DEFAULT_TARGETS
    if isinstance(targets, str):
        raise TypeError(f"{argument} must be a sequence of role names such as ('q', 'v'), got the string {targets!r}")
    roles = tuple(targets)
    unknown = [role for role in roles if role not in LINEAR_ROLES]
    if unknown:
        raise ValueError(f"{argument} must name roles among {', '.join(LINEAR_ROLES)}; got unknown {unknown}")
    if len(set(roles)) != len(roles):
        raise ValueError(f"{argument} must not repeat a role, got {list(roles)}")
    return roles
