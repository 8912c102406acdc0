"""
The atheris entry point for one target: ``python -m tests.fuzz.main TARGET
[libFuzzer options] [corpus dirs or files]``, normally started by
tests/fuzz/run. mxpolicyd (and, for the domain target, idna) is instrumented
for coverage. ``--replay TARGET FILE...`` runs saved inputs through the target
without atheris, on any stack, to check a crash or its fix.
"""

from __future__ import annotations

import os
import sys
import traceback
from pathlib import Path
from typing import Any

from twisted.logger import LogLevel, globalLogBeginner


class CriticalEvents:
    """
    Collects the critical log events that are bugs even when every reply
    looked right: a lost failure ("Unhandled error in Deferred"), or the
    daemon logging a failure other than the fake lookup's own crash.
    """

    def __init__(self, expected: type[BaseException]) -> None:
        self.expected = expected
        self.events: list[str] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("log_level") != LogLevel.critical:
            return
        failure = event.get("log_failure")
        if failure is not None and failure.check(self.expected) is not None:
            return
        self.events.append(
            "%s: %r" % (event.get("log_namespace"), failure.value if failure else event)
        )


def replay(name: str, paths: list[str]) -> int:
    from tests.fuzz import targets

    if os.environ.get("MXPOLICYD_FUZZ_NO_SUPPRESS"):
        targets.suppressed.clear()
    critical = CriticalEvents(targets.LookupCrash)
    globalLogBeginner.beginLoggingTo([critical], redirectStandardIO=False)
    if name not in targets.TARGETS:
        print(f"unknown target {name!r}; targets: {' '.join(targets.TARGETS)}", file=sys.stderr)
        return 2
    status = 0
    for path in paths:
        errors = targets.replay(name, [Path(path).read_bytes()])
        errors += [(b"", targets.InvariantError("critical log event", e)) for e in critical.events]
        critical.events.clear()
        for _, error in errors:
            print(f"{path}: {error!r}")
            traceback.print_exception(error)
        print(f"{path}: {'FAILED' if errors else 'ok'}")
        status |= bool(errors)
    return status


def fuzz(name: str, libfuzzer_args: list[str]) -> None:
    import atheris

    # Twisted compiles bytes regexes at import that atheris 3.0's regex hook
    # cannot model (TypeError): import it before the hooks go on.
    import twisted.internet.tcp  # noqa: F401

    # Guide the mutator through regexes and string comparisons.
    atheris.enabled_hooks.add("RegEx")
    atheris.enabled_hooks.add("str")
    include = ["mxpolicyd", "tests.fuzz.targets"]
    if name == "domain":
        include.append("idna")
    with atheris.instrument_imports(include=include):
        from tests.fuzz import targets
    if os.environ.get("MXPOLICYD_FUZZ_NO_SUPPRESS"):
        targets.suppressed.clear()
    critical = CriticalEvents(targets.LookupCrash)
    globalLogBeginner.beginLoggingTo([critical], redirectStandardIO=False)
    target = targets.TARGETS[name]

    def one(data: bytes) -> None:
        target(data)
        if critical.events:
            events, critical.events = critical.events, []
            raise targets.InvariantError("critical log event", events)

    print(f"target {name}: {targets.describe(name)}", flush=True)
    print(f"suppressed known issues: {sorted(targets.suppressed) or 'none'}", flush=True)
    atheris.Setup([sys.argv[0], *libfuzzer_args], one)
    atheris.Fuzz()


def main(argv: list[str]) -> int:
    if len(argv) >= 3 and argv[1] == "--replay":
        return replay(argv[2], argv[3:])
    if len(argv) < 2 or argv[1].startswith("-"):
        print(__doc__, file=sys.stderr)
        return 2
    fuzz(argv[1], argv[2:])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
