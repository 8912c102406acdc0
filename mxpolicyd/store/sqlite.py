"""
The embedded store: domain states in SQLite, written behind the memory layer.

The cache calls L{SQLiteStore.put} on the reactor thread; that only records
the serialised state.  A timer flushes the batch in one transaction on a
dedicated thread, so no lookup ever waits on the disk.  At start-up the cache
reads the store in batches in the background (L{SQLiteStore.scan}) and reads
single domains it has not reached yet on demand (L{SQLiteStore.get}), so a
restarted daemon answers every cached domain at once, with no network, even
with a million of them.  SQLite's WAL journal makes a kill -9 lose at most
the last unflushed batch, never the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from typing import Any, Callable, Iterator

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger, LogLevel
from twisted.python.failure import Failure

from mxpolicyd.evidence.state import DomainState
from mxpolicyd.ops.outage import Outage
from mxpolicyd.store.base import Stored
from mxpolicyd.store.writebehind import Batch, WriteBehind

Runner = Callable[..., "Deferred[Any]"]

# The store's files: the daemon's user may write, its group read, nobody
# else anything (which domains the MTA mails is nobody else's business).
MODE = 0o640

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (
    domain TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    updated REAL NOT NULL,
    used REAL NOT NULL DEFAULT 0
) WITHOUT ROWID
"""


class SQLiteStore:
    """Domain states by name; one writer, batched."""

    _log = Logger()
    shared = False

    def __init__(self, path: str, run: Runner, wall: Callable[[], float] = time.time) -> None:
        """
        @param run: runs a blocking callable off the reactor thread and
            returns a Deferred of its result (a one-thread pool in the
            daemon, a synchronous call in tests).
        """
        self.path = path
        self._run = run
        self._wall = wall
        self._db: sqlite3.Connection | None = None
        # Reads happen on the reactor thread, on their own connection: WAL
        # lets them run beside the writer thread's transactions.
        self._reader: sqlite3.Connection | None = None
        # The serialised state and when it was last used, by domain.
        self._writes: WriteBehind[tuple[str, float]] = WriteBehind(
            self._write, self._written, self._not_written
        )
        # A full disk is logged when it starts and when it ends, not on
        # every retry.
        self._outage = Outage(self._log, wall)

    def open(self) -> None:
        """
        Open (creating) the database; a file that is not a usable SQLite
        database is moved aside and replaced, and the loss is logged.  A
        new file is created with mode 0640 whatever the umask, and SQLite
        gives its -wal and -shm files the same mode.
        """
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, mode=0o750, exist_ok=True)
        try:
            self._db = self._connect()
        except sqlite3.DatabaseError as e:
            aside = "%s.corrupt-%d" % (self.path, int(self._wall()))
            self._log.error(
                "Store {path} is unreadable ({error}); moving it to {aside} "
                "and starting with an empty store (every domain is evaluated "
                "afresh)",
                path=self.path,
                error=str(e),
                aside=aside,
            )
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.replace(self.path + suffix, aside + suffix)
            self._db = self._connect()
        self._reader = sqlite3.connect(self.path, isolation_level=None)

    def _connect(self) -> sqlite3.Connection:
        _create(self.path)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute(_SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(domains)")}
            if "used" not in columns:
                db.execute("ALTER TABLE domains ADD COLUMN used REAL NOT NULL DEFAULT 0")
            db.execute("SELECT count(*) FROM domains").fetchone()
        except BaseException:
            db.close()
            raise
        return db

    def scan(self, batch: int = 2000) -> Iterator[list[Stored]]:
        """
        Every stored domain, a batch at a time, each batch its own short
        read; unreadable rows are logged and skipped, and damage to the file
        (which opening it need not reveal) ends the walk: the domains not
        read are evaluated afresh.
        """
        assert self._reader is not None
        last = ""
        bad = 0
        read = 0
        while True:
            try:
                rows = self._reader.execute(
                    "SELECT domain, state, used FROM domains WHERE domain > ? "
                    "ORDER BY domain LIMIT ?",
                    (last, batch),
                ).fetchall()
            except sqlite3.DatabaseError as e:
                self._log.error(
                    "Store {path} is damaged ({error}): read {count} domains, the "
                    "others are evaluated afresh.  Check it with sqlite3 {path} "
                    "'PRAGMA integrity_check'; moving it aside while mxpolicyd is "
                    "stopped starts an empty store",
                    path=self.path,
                    error=str(e),
                    count=read,
                )
                break
            if not rows:
                break
            last = rows[-1][0]
            found = []
            for domain, text, used in rows:
                state = self._parse(domain, text, bad < 10)
                if state is None:
                    bad += 1
                else:
                    found.append((domain, state, used))
            read += len(found)
            yield found
        if bad:
            self._log.warn("Skipped {count} unreadable stored states", count=bad)

    def load(self) -> Iterator[tuple[str, DomainState]]:
        """Every stored domain state, at once (for tools and tests)."""
        for batch in self.scan():
            for domain, state, _ in batch:
                yield domain, state

    def get(self, domain: str) -> Deferred[Stored | None]:
        """One domain, read now: an indexed read of one row."""
        assert self._reader is not None
        if domain in self._writes:
            # Not yet written: the newest state is in memory.
            change = self._writes[domain]
            if change is None:
                return succeed(None)
            text, used = change
            return succeed((domain, DomainState.from_json(json.loads(text)), used))
        try:
            row = self._reader.execute(
                "SELECT state, used FROM domains WHERE domain = ?", (domain,)
            ).fetchone()
        except sqlite3.Error:
            # A damaged page: the caller evaluates the domain afresh.
            return fail()
        if row is None:
            return succeed(None)
        state = self._parse(domain, row[0], True)
        return succeed(None if state is None else (domain, state, row[1]))

    def _parse(self, domain: str, text: str, log: bool) -> DomainState | None:
        try:
            return DomainState.from_json(json.loads(text))
        except (ValueError, TypeError, KeyError) as e:
            if log:
                self._log.warn(
                    "Skipping unreadable stored state of {domain}: {error}",
                    domain=domain,
                    error=str(e),
                )
            return None

    def lease(self, domain: str, seconds: float) -> Deferred[bool]:
        """One daemon owns this file: every refresh is its own."""
        return succeed(True)

    def put(self, domain: str, state: DomainState, used_at: float = 0.0,
            acknowledged: bool = False) -> None:
        self._writes.put(domain, (json.dumps(state.to_json(), separators=(",", ":")), used_at))

    def delete(self, domain: str) -> None:
        self._writes.delete(domain)

    def on_merged(self, listener: Callable[[str, DomainState], None]) -> None:
        """This daemon alone writes the file: nothing to merge, never called."""

    @property
    def unwritten(self) -> int:
        return len(self._writes)

    def flush(self) -> Deferred[None]:
        """Write the unwritten states in one transaction; one flush at a time."""
        if self._db is None:
            return succeed(None)
        return self._writes.flush()

    def _write(self, batch: Batch[tuple[str, float]]) -> Deferred[object]:
        return self._run(self._transaction, batch, self._wall())

    def _written(self, count: int) -> None:
        self._outage.ended(
            "Wrote {count} domain states to {path} again, after {failures} failed attempts",
            count=count,
            path=self.path,
        )

    def _not_written(self, failure: Failure, count: int) -> None:
        # Disk full, read-only file system, ...: the states wait in memory.
        self._outage.failed(
            "Cannot write {count} domain states to {path} ({error}); keeping them "
            "in memory and retrying",
            level=LogLevel.error,
            count=count,
            path=self.path,
            error=failure.getErrorMessage(),
        )

    def _transaction(self, batch: Batch[tuple[str, float]], now: float) -> None:
        assert self._db is not None
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "DELETE FROM domains WHERE domain = ?",
                [(d,) for d, t in batch.items() if t is None],
            )
            db.executemany(
                "INSERT OR REPLACE INTO domains (domain, state, updated, used) "
                "VALUES (?, ?, ?, ?)",
                [(d, t[0], now, t[1]) for d, t in batch.items() if t is not None],
            )
            db.execute("COMMIT")
        except BaseException:
            # SQLite rolls back by itself on some errors (a full disk): a
            # second ROLLBACK would fail and hide the error that matters.
            if db.in_transaction:
                try:
                    db.execute("ROLLBACK")
                except sqlite3.Error:
                    pass
            raise

    def close(self) -> None:
        for db in (self._db, self._reader):
            if db is not None:
                db.close()
        self._db = self._reader = None


def _create(path: str) -> None:
    """
    Create an empty database file (SQLite takes an empty file for an empty
    database) with mode L{MODE} exactly, unless it exists.  SQLite would
    create it 0644 less the umask, world-readable under the usual 022,
    and copies the database's mode to the -wal and -shm files it makes.
    """
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, MODE)
    finally:
        os.close(fd)
