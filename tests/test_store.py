"""Tests for L{mxpolicyd.store.sqlite}: write-behind SQLite, corruption, write failures."""

from __future__ import annotations

import json
import os
import sqlite3
import stat
from typing import Any, Callable, cast

from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.task import Clock
from twisted.logger import ILogObserver, LogLevel, formatEvent, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.evidence.state import DomainState, StsState
from mxpolicyd.evidence.sts import StsPolicy
from mxpolicyd.store.service import StoreService
from mxpolicyd.store.sqlite import SQLiteStore

STATE = DomainState(
    sts=StsState(policy=StsPolicy("enforce", 86400, ("mx.example.test",)),
                 policy_id="1", fetched_at=1.0, expires_at=86401.0, record="v=STSv1; id=1")
)


def synchronous(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
    return maybeDeferred(f, *args)


class SQLiteStoreTests(SynchronousTestCase):
    def setUp(self) -> None:
        self.path = os.path.join(os.path.abspath(self.mktemp()), "store.sqlite")
        self.store = self.open()

    def open(self, run: Callable[..., Deferred[Any]] = synchronous) -> SQLiteStore:
        store = SQLiteStore(self.path, run, wall=lambda: 1234.0)
        store.open()
        self.addCleanup(store.close)
        return store

    def test_round_trip(self) -> None:
        """A flushed state is loaded back unchanged by a new store."""
        self.store.put("example.test", STATE)
        self.store.put("other.test", DomainState())
        self.successResultOf(self.store.flush())
        self.store.close()
        loaded = dict(self.open().load())
        self.assertEqual(loaded, {"example.test": STATE, "other.test": DomainState()})

    def test_write_behind(self) -> None:
        """put() writes nothing until a flush."""
        self.store.put("example.test", STATE)
        self.assertEqual(list(self.open().load()), [])
        self.assertEqual(self.store.unwritten, 1)
        self.successResultOf(self.store.flush())
        self.assertEqual(self.store.unwritten, 0)
        self.assertEqual(len(list(self.open().load())), 1)

    def test_delete(self) -> None:
        """A deleted domain is gone after the flush."""
        self.store.put("example.test", STATE)
        self.successResultOf(self.store.flush())
        self.store.delete("example.test")
        self.successResultOf(self.store.flush())
        self.assertEqual(list(self.open().load()), [])

    def test_last_put_wins(self) -> None:
        """Of two puts in one batch the later is written."""
        self.store.put("example.test", DomainState())
        self.store.put("example.test", STATE)
        self.successResultOf(self.store.flush())
        self.assertEqual(dict(self.open().load())["example.test"], STATE)

    def test_one_flush_at_a_time(self) -> None:
        """A flush while one is running waits for it; what came after waits for the next."""
        runs: list[Deferred[Any]] = []

        def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            d.addCallback(lambda _: f(*args))
            runs.append(d)
            return d

        store = self.open(later)
        store.put("a.test", STATE)
        first = store.flush()
        store.put("b.test", STATE)
        second = store.flush()
        self.assertEqual(len(runs), 1)
        self.assertNoResult(first)
        self.assertNoResult(second)
        runs[0].callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(store.unwritten, 1)
        self.assertEqual(set(dict(self.open().load())), {"a.test"})

    def test_write_failure_keeps_batch(self) -> None:
        """A failed write (disk full) keeps the states unwritten."""

        def broken(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            return fail(sqlite3.OperationalError("database or disk is full"))

        store = self.open(broken)
        store.put("a.test", STATE)
        self.successResultOf(store.flush())
        self.assertEqual(store.unwritten, 1)

    def logged(self, store: SQLiteStore) -> list[dict[str, Any]]:
        """What C{store} logs from now on."""
        events: list[dict[str, Any]] = []

        def observe(event: dict[str, Any]) -> None:
            if event.get("log_source") is store:
                events.append(event)

        observer = cast(ILogObserver, observe)
        globalLogPublisher.addObserver(observer)
        self.addCleanup(globalLogPublisher.removeObserver, observer)
        return events

    def test_write_failure_logged_once(self) -> None:
        """Failed flushes log one error per outage, and one line when writes work again."""
        outcome: list[Exception | None] = [sqlite3.OperationalError("database or disk is full")]

        def flaky(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            if outcome[0] is not None:
                return fail(outcome[0])
            return maybeDeferred(f, *args)

        store = self.open(flaky)
        events = self.logged(store)
        store.put("a.test", STATE)
        for _ in range(5):
            self.successResultOf(store.flush())
        errors = [e for e in events if e["log_level"] >= LogLevel.warn]
        self.assertEqual(len(errors), 1)
        self.assertIn("database or disk is full", formatEvent(errors[0]))
        outcome[0] = None
        self.successResultOf(store.flush())
        self.successResultOf(store.flush())
        self.assertEqual(store.unwritten, 0)
        infos = [formatEvent(e) for e in events if e["log_level"] == LogLevel.info]
        self.assertEqual(len(infos), 1)
        self.assertIn("again, after 5 failed attempts", infos[0])
        self.assertEqual(dict(self.open().load()), {"a.test": STATE})

    def test_full_disk_error_not_hidden(self) -> None:
        """A write SQLite rolled back by itself fails with its own error, not the ROLLBACK's."""
        self.store.put("a.test", STATE)
        self.successResultOf(self.store.flush())
        db = self.store._db
        assert db is not None
        # A page cap stands in for the full disk: SQLITE_FULL, and SQLite
        # rolls the transaction back by itself.
        pages = db.execute("PRAGMA page_count").fetchone()[0]
        db.execute("PRAGMA max_page_count = %d" % pages)
        events = self.logged(self.store)
        for i in range(50):
            self.store.put("big%d.test" % i, STATE)
        self.successResultOf(self.store.flush())
        self.assertEqual(self.store.unwritten, 50)
        self.assertIn("database or disk is full", formatEvent(events[0]))
        self.assertFalse(db.in_transaction)
        db.execute("PRAGMA max_page_count = 1000000")
        self.successResultOf(self.store.flush())
        self.assertEqual(len(list(self.open().load())), 51)

    def test_newer_state_survives_failed_write(self) -> None:
        """A state put during a failed write is not overwritten by the old batch."""
        runs: list[Deferred[Any]] = []

        def later(f: Callable[..., Any], *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            runs.append(d)
            return d

        store = self.open(later)
        store.put("a.test", DomainState())
        store.flush()
        store.put("a.test", STATE)
        runs[0].errback(sqlite3.OperationalError("disk I/O error"))
        store._run = synchronous
        self.successResultOf(store.flush())
        self.assertEqual(dict(self.open().load())["a.test"], STATE)

    def test_corrupt_file(self) -> None:
        """A file that is not SQLite is moved aside and an empty store starts."""
        self.store.close()
        with open(self.path, "wb") as f:
            f.write(b"this is not a database" * 100)
        store = self.open()
        self.assertEqual(list(store.load()), [])
        self.assertTrue(os.path.exists(self.path + ".corrupt-1234"))
        store.put("a.test", STATE)
        self.successResultOf(store.flush())
        self.assertEqual(len(list(self.open().load())), 1)

    def modes(self) -> dict[str, int]:
        return {suffix: stat.S_IMODE(os.stat(self.path + suffix).st_mode)
                for suffix in ("", "-wal", "-shm") if os.path.exists(self.path + suffix)}

    def test_files_0640_whatever_the_umask(self) -> None:
        """The database and its -wal and -shm files are created 0640, even with umask 000."""
        self.store.close()
        os.remove(self.path)
        for suffix in ("-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.remove(self.path + suffix)
        before = os.umask(0)
        try:
            store = self.open()
            store.put("a.test", STATE)
            self.successResultOf(store.flush())
        finally:
            os.umask(before)
        self.assertEqual(self.modes(), {"": 0o640, "-wal": 0o640, "-shm": 0o640})

    def test_replaced_corrupt_file_0640(self) -> None:
        """The empty store that replaces a corrupt one is 0640 too."""
        self.store.close()
        with open(self.path, "wb") as f:
            f.write(b"this is not a database" * 100)
        os.chmod(self.path, 0o666)
        before = os.umask(0)
        try:
            self.open()
        finally:
            os.umask(before)
        self.assertEqual(self.modes()[""], 0o640)

    def test_existing_file_mode_kept(self) -> None:
        """A store the administrator made group-writable stays so: only new files get 0640."""
        self.store.close()
        os.chmod(self.path, 0o660)
        self.open()
        self.assertEqual(self.modes()[""], 0o660)

    def fill(self, count: int, size: int = 0) -> None:
        """Flush ``count`` domains, each state padded to about ``size`` bytes."""
        record = "v=STSv1; id=1; " + "x" * size
        for i in range(count):
            self.store.put("d%03d.test" % i, DomainState(sts=StsState(record=record)))
        self.successResultOf(self.store.flush())
        self.store.close()

    def overflow_pages(self) -> list[int]:
        """
        The file's pages (from 0) that hold no b-tree: with states over a
        page each, the overflow pages, which SQLite reads only with the row.
        """
        with open(self.path, "rb") as f:
            data = f.read()
        return [
            i for i in range(1, len(data) // 4096)
            if data[i * 4096] not in (0x02, 0x05, 0x0A, 0x0D)
        ]

    def damage_overflow_page(self) -> None:
        """Zero an overflow page of some row: a row count still passes."""
        page = self.overflow_pages()[0]
        with open(self.path, "r+b") as f:
            f.seek(page * 4096)
            f.write(b"\0" * 4096)
        db = sqlite3.connect(self.path)
        self.assertEqual(db.execute("SELECT count(*) FROM domains").fetchone(), (20,))
        db.close()

    def test_damage_found_while_loading(self) -> None:
        """A damaged page met while loading ends the load with an error naming the file; nothing raises."""
        self.fill(20, 6000)
        self.damage_overflow_page()
        store = self.open()
        events = self.logged(store)
        loaded = list(store.load())
        self.assertLess(len(loaded), 20)
        errors = [formatEvent(e) for e in events if e["log_level"] == LogLevel.error]
        self.assertEqual(len(errors), 1, errors)
        self.assertIn("Store %s is damaged" % self.path, errors[0])

    def test_damaged_row_get_fails(self) -> None:
        """get() of a row on a damaged page fails its Deferred (the cache evaluates afresh)."""
        self.fill(20, 6000)
        self.damage_overflow_page()
        store = self.open()
        failures: list[Failure] = []
        for i in range(20):
            d = store.get("d%03d.test" % i)
            d.addErrback(failures.append)
        self.assertTrue(failures)
        self.assertTrue(all(f.check(sqlite3.DatabaseError) for f in failures))

    def test_bad_rows_skipped(self) -> None:
        """A row that does not parse is skipped; the others load."""
        self.store.put("good.test", STATE)
        self.successResultOf(self.store.flush())
        db = sqlite3.connect(self.path)
        db.execute("INSERT INTO domains (domain, state, updated) VALUES ('bad.test', '{\"v\": 99}', 0)")
        db.execute("INSERT INTO domains (domain, state, updated) VALUES ('junk.test', 'not json', 0)")
        db.commit()
        db.close()
        self.assertEqual(dict(self.open().load()), {"good.test": STATE})


    def test_scan_batches(self) -> None:
        """scan() yields every domain once, in batches, with its last use time."""
        for i in range(25):
            self.store.put("d%02d.test" % i, STATE, used_at=float(i))
        self.successResultOf(self.store.flush())
        batches = list(self.store.scan(batch=10))
        self.assertEqual([len(b) for b in batches], [10, 10, 5])
        rows = [row for b in batches for row in b]
        self.assertEqual([r[0] for r in rows], ["d%02d.test" % i for i in range(25)])
        self.assertEqual(rows[7], ("d07.test", STATE, 7.0))

    def test_get(self) -> None:
        """get() reads one domain: flushed, still unwritten, deleted or unknown."""
        self.store.put("a.test", STATE, used_at=5.0)
        self.assertEqual(self.successResultOf(self.store.get("a.test")), ("a.test", STATE, 5.0))
        self.successResultOf(self.store.flush())
        self.assertEqual(self.successResultOf(self.store.get("a.test")), ("a.test", STATE, 5.0))
        self.store.delete("a.test")
        self.assertIsNone(self.successResultOf(self.store.get("a.test")))
        self.assertIsNone(self.successResultOf(self.store.get("other.test")))

    def test_old_schema_migrated(self) -> None:
        """A store written before the 'used' column existed is upgraded in place."""
        self.store.close()
        os.remove(self.path)
        db = sqlite3.connect(self.path)
        db.execute("CREATE TABLE domains (domain TEXT PRIMARY KEY, state TEXT NOT NULL, "
                   "updated REAL NOT NULL) WITHOUT ROWID")
        db.execute("INSERT INTO domains VALUES ('a.test', ?, 0)",
                   (json.dumps(STATE.to_json()),))
        db.commit()
        db.close()
        self.assertEqual(self.successResultOf(self.open().get("a.test")), ("a.test", STATE, 0.0))

    def test_lease(self) -> None:
        """A SQLite store belongs to one daemon: every lease is granted."""
        self.assertTrue(self.successResultOf(self.store.lease("a.test", 30)))


class StoreServiceTests(SynchronousTestCase):
    def test_flush_on_timer_and_stop(self) -> None:
        """The service flushes every interval and once more when stopped."""
        path = os.path.join(os.path.abspath(self.mktemp()), "s.sqlite")
        store = SQLiteStore(path, synchronous)
        store.open()
        clock = Clock()
        stopped: list[bool] = []
        service = StoreService(store, clock, 1.0, stop=lambda: stopped.append(True))
        service.startService()
        store.put("a.test", STATE)
        clock.advance(1.0)
        self.assertEqual(store.unwritten, 0)
        store.put("b.test", STATE)
        self.successResultOf(service.stopService())
        self.assertEqual(stopped, [True])
        reopened = SQLiteStore(path, synchronous)
        reopened.open()
        self.addCleanup(reopened.close)
        self.assertEqual(set(dict(reopened.load())), {"a.test", "b.test"})
