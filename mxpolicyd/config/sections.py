"""
Reading the configuration's tables: each value checked for its type and
range as it is read, each table checked for keys nobody read, and every
error naming the file and the key, so an administrator can fix it without
reading code.
"""

from __future__ import annotations

from typing import Any, Callable, TypeVar


class ConfigError(Exception):
    """The configuration cannot be used; the message names the key at fault."""


T = TypeVar("T")


class Section:
    """Reads one table, checking types and remembering which keys were used."""

    def __init__(self, source: str, path: str, table: Any) -> None:
        self._source = source
        self._path = path
        if not isinstance(table, dict):
            self.fail(path, "must be a table, like [%s]" % (path,))
        self._table: dict[str, Any] = table
        self._seen: set[str] = set()

    def fail(self, key: str, problem: str) -> None:
        raise ConfigError("%s: %s %s" % (self._source, key, problem))

    def _key(self, name: str) -> str:
        return "%s.%s" % (self._path, name) if self._path else name

    def get(
        self,
        name: str,
        default: T,
        kind: type | tuple[type, ...],
        check: Callable[[Any], str | None] | None = None,
    ) -> T:
        self._seen.add(name)
        if name not in self._table:
            return default
        value = self._table[name]
        # bool is an int in Python; a number field must not accept true.
        if isinstance(value, bool) and bool not in (
            kind if isinstance(kind, tuple) else (kind,)
        ):
            self.fail(self._key(name), "must be a number, not %r" % (value,))
        if not isinstance(value, kind):
            self.fail(
                self._key(name),
                "must be %s, not %r" % (_kind_name(kind), value),
            )
        if isinstance(kind, tuple) and float in kind:
            value = float(value)
        if check is not None:
            problem = check(value)
            if problem:
                self.fail(self._key(name), problem)
        return value  # type: ignore[no-any-return,unused-ignore]

    def positive(self, name: str, default: T) -> T:
        kind: tuple[type, ...] = (int, float) if isinstance(default, float) else (int,)
        return self.get(
            name,
            default,
            kind,
            lambda v: None if v > 0 else "must be greater than 0, not %r" % (v,),
        )

    def table(self, name: str) -> Section:
        self._seen.add(name)
        return Section(self._source, self._key(name), self._table.get(name, {}))

    def entry(self, name: str, path: str) -> Section:
        """A table under a quoted key, named in errors as C{path}."""
        self._seen.add(name)
        return Section(self._source, path, self._table.get(name, {}))

    def finish(self) -> None:
        unknown = sorted(set(self._table) - self._seen)
        if unknown:
            self.fail(
                self._key(unknown[0]),
                "is not a known setting (known here: %s)"
                % (", ".join(sorted(self._seen)),),
            )


def _kind_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    names = {
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "true or false",
        list: "a list",
    }
    return " or ".join(sorted({names.get(k, k.__name__) for k in kinds}))


def list_of(
    section: Section,
    name: str,
    default: tuple[str, ...],
    check: Callable[[str], str | None],
) -> tuple[str, ...]:
    values = section.get(name, list(default), list)
    for item in values:
        if not isinstance(item, str):
            section.fail(section._key(name), "must be a list of strings")
        problem = check(item)
        if problem:
            section.fail(section._key(name), problem)
    return tuple(values)


