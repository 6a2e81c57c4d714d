"""String-keyed registries that reject duplicates and suggest the nearest name on a typo."""

from __future__ import annotations

import difflib
from typing import Callable, Generic, Iterator, TypeVar

from gram_bench.core.errors import UsageError

T = TypeVar("T")


def closest(name: str, choices: list[str]) -> str | None:
    match = difflib.get_close_matches(name, choices, n=1, cutoff=0.5)
    return match[0] if match else None


def unknown_name_message(kind: str, name: str, choices: list[str]) -> str:
    hint = closest(name, choices)
    did = f" Did you mean '{hint}'?" if hint else ""
    return f"Unknown {kind} '{name}'.{did} Valid {kind}s: {', '.join(sorted(choices))}."


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            raise UsageError(unknown_name_message(self.kind, name, list(self._items)))
        return self._items[name]

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())
