"""Tests for L{mxpolicyd.store.writebehind}: changes by domain, written a batch at a time."""

from __future__ import annotations

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from mxpolicyd.store.writebehind import Batch, WriteBehind


class WriteBehindTests(SynchronousTestCase):
    """The newest change of each domain, written in batches, one at a time, kept when a write fails."""

    def setUp(self) -> None:
        # Each write: a copy of the batch it got, and the Deferred that ends it.
        self.writes: list[tuple[Batch[str], Deferred[object]]] = []
        self.written: list[int] = []
        self.failed: list[tuple[str, int]] = []
        self.buffer: WriteBehind[str] = WriteBehind(
            self.write,
            self.written.append,
            lambda failure, count: self.failed.append((failure.getErrorMessage(), count)),
        )

    def write(self, batch: Batch[str]) -> Deferred[object]:
        d: Deferred[object] = Deferred()
        self.batch = batch
        self.writes.append((dict(batch), d))
        return d

    def test_changes_by_domain(self) -> None:
        """A put or delete records the domain's newest change; nothing is written yet."""
        self.buffer.put("a.test", "1")
        self.buffer.put("a.test", "2")
        self.buffer.put("b.test", "1")
        self.buffer.delete("b.test")
        self.assertEqual(len(self.buffer), 2)
        self.assertEqual(self.buffer["a.test"], "2")
        self.assertIn("b.test", self.buffer)
        self.assertIsNone(self.buffer["b.test"])
        self.assertNotIn("c.test", self.buffer)
        self.assertEqual(self.writes, [])

    def test_flush_writes_one_batch(self) -> None:
        """A flush hands the writer every unwritten change, and fires when it is written."""
        self.buffer.put("a.test", "1")
        self.buffer.delete("b.test")
        d = self.buffer.flush()
        [(batch, writing)] = self.writes
        self.assertEqual(batch, {"a.test": "1", "b.test": None})
        self.assertEqual(len(self.buffer), 0)
        self.assertNoResult(d)
        writing.callback(None)
        self.assertIsNone(self.successResultOf(d))
        self.assertEqual(self.written, [2])
        self.assertEqual(self.failed, [])

    def test_nothing_to_write(self) -> None:
        """A flush with nothing unwritten does not call the writer."""
        self.successResultOf(self.buffer.flush())
        self.assertEqual(self.writes, [])

    def test_one_batch_at_a_time(self) -> None:
        """A flush during a write waits for it; what came in meanwhile goes with the next flush."""
        self.buffer.put("a.test", "1")
        first = self.buffer.flush()
        self.buffer.put("b.test", "1")
        second = self.buffer.flush()
        self.assertEqual(len(self.writes), 1)
        self.assertNoResult(second)
        self.writes[0][1].callback(None)
        self.successResultOf(first)
        self.successResultOf(second)
        self.assertEqual(len(self.buffer), 1)
        self.buffer.flush()
        self.assertEqual(self.writes[1][0], {"b.test": "1"})

    def test_each_caller_its_own_deferred(self) -> None:
        """What one waiting caller's callbacks return does not reach another caller."""
        self.buffer.put("a.test", "1")
        first = self.buffer.flush()
        second = self.buffer.flush()
        self.assertIsNot(first, second)
        first.addCallback(lambda _: "changed")
        self.writes[0][1].callback(None)
        self.assertEqual(self.successResultOf(first), "changed")
        self.assertIsNone(self.successResultOf(second))

    def test_failed_write_kept_newer_wins(self) -> None:
        """A failed batch comes back, except where a newer change replaced it; the failure is reported."""
        self.buffer.put("a.test", "old")
        self.buffer.put("b.test", "old")
        d = self.buffer.flush()
        self.buffer.put("a.test", "new")
        self.writes[0][1].errback(OSError("disk full"))
        self.successResultOf(d)
        self.assertEqual((self.buffer["a.test"], self.buffer["b.test"]), ("new", "old"))
        self.assertEqual(self.failed, [("disk full", 2)])
        self.assertEqual(self.written, [])

    def test_newer_wins_whichever_is_larger(self) -> None:
        """Newer changes win whether the failed batch or the newer changes are the larger."""
        for newer in (1, 5):
            buffer: WriteBehind[str] = WriteBehind(self.write, self.written.append,
                                                   lambda failure, count: None)
            for i in range(3):
                buffer.put("d%d.test" % i, "old")
            buffer.flush()
            for i in range(newer):
                buffer.put("d%d.test" % i, "new")
            self.writes[-1][1].errback(OSError("down"))
            self.assertEqual(len(buffer), max(3, newer))
            self.assertEqual(buffer["d0.test"], "new")
            self.assertEqual(buffer["d2.test"], "new" if newer > 2 else "old")

    def test_confirmed_part_not_kept(self) -> None:
        """What the writer removed from the batch before failing (confirmed) is not written again."""
        self.buffer.put("a.test", "1")
        self.buffer.put("b.test", "1")
        self.buffer.flush()
        del self.batch["a.test"]
        self.writes[0][1].errback(OSError("lost"))
        self.assertNotIn("a.test", self.buffer)
        self.assertEqual(self.buffer["b.test"], "1")

    def test_writer_that_raises(self) -> None:
        """A writer that raises at once is a failed write: the batch is kept and the next flush retries."""

        def broken(batch: Batch[str]) -> Deferred[object]:
            raise OSError("read-only file system")

        failures: list[Failure] = []
        buffer: WriteBehind[str] = WriteBehind(broken, self.written.append,
                                               lambda failure, count: failures.append(failure))
        buffer.put("a.test", "1")
        self.successResultOf(buffer.flush())
        self.successResultOf(buffer.flush())
        self.assertEqual(len(failures), 2)
        self.assertEqual(buffer["a.test"], "1")

    def test_synchronous_writer(self) -> None:
        """A writer that is done at once leaves the buffer free for the next flush."""
        batches: list[Batch[str]] = []

        def at_once(batch: Batch[str]) -> Deferred[object]:
            batches.append(dict(batch))
            d: Deferred[object] = Deferred()
            d.callback(None)
            return d

        buffer: WriteBehind[str] = WriteBehind(at_once, self.written.append,
                                               lambda failure, count: None)
        buffer.put("a.test", "1")
        self.successResultOf(buffer.flush())
        buffer.put("b.test", "1")
        self.successResultOf(buffer.flush())
        self.assertEqual(batches, [{"a.test": "1"}, {"b.test": "1"}])
        self.assertEqual(self.written, [1, 1])
