"""Name → builder registries (models, norms, inits, optimisers, schedules, augmentations,
normalisations, convolutions) share one lookup, whose error names the flag and lists the names."""
from __future__ import annotations

from typing import Mapping, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A bad flag value; the message names the flag and what is allowed (one line)."""


def lookup(registry: Mapping[str, T], name: str, flag: str) -> T:
    """registry[name]; an unknown name is a ConfigError naming --flag and the allowed names."""
    if name not in registry:
        raise ConfigError(f"--{flag}={name!r} is unknown; allowed: {', '.join(registry)}")
    return registry[name]
