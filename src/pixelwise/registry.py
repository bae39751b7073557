"""One small generic registry: components are registered by name and built through factories."""

from __future__ import annotations

from collections.abc import Callable
from typing import Generic, TypeVar

from pixelwise.errors import ConfigError, did_you_mean

T = TypeVar("T")


def unknown_name_message(kind: str, name: str, valid: list[str]) -> str:
    """An error message for an unknown ``name`` of ``kind``, with close matches and the valid names."""
    close = did_you_mean(name, valid, cutoff=0.5)
    hint = f" {close[0].upper()}{close[1:]}" if close else ""
    shown = ", ".join(valid[:40]) + (f", ... ({len(valid)} in all)" if len(valid) > 40 else "")
    return f"unknown {kind} '{name}'.{hint} Valid names: {shown}"


class Registry(Generic[T]):
    """Name -> component. Names are case-insensitive; an unknown name lists the valid ones."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T | None = None) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; without ``obj``, return a decorator."""

        def add(item: T) -> T:
            key = name.lower()
            assert key not in self._items, f"{self.kind} '{name}' registered twice"
            self._items[key] = item
            return item

        return add(obj) if obj is not None else add

    def get(self, name: str) -> T:
        try:
            return self._items[name.lower()]
        except KeyError:
            raise ConfigError(unknown_name_message(self.kind, name, self.names())) from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        """(name, component) pairs in registration order."""
        return list(self._items.items())

    def __contains__(self, name: str) -> bool:
        return name.lower() in self._items
