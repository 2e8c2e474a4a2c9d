"""The ingest log: an append-only, crash-safe file log with group commit.

The collector acknowledges a request only once its records are in this log and the
log is fsynced. Many concurrent requests share one fsync (group commit), which is
what makes durable-before-acknowledged affordable at tens of thousands of events per
second. The ingest pipeline reads the log behind the writer and moves records to the
stores; segments it has fully applied are deleted.

Layout: ``<dir>/<start offset, 20 digits>.log`` segment files. Offsets are global
byte positions, so an entry is named by the offset just past its end. Each entry is
``length (u32 LE) | crc32 (u32 LE) | payload``. On open, a torn tail (a crash in the
middle of a write) fails its length or CRC check and is cut off: it was never
acknowledged.
"""

from __future__ import annotations

import asyncio
import os
import struct
import threading
import zlib
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

from ..errors import StoreError

__all__ = ["IngestLog", "LogEntry"]

_HEADER = struct.Struct("<II")
_MAX_ENTRY = 256 * 1024 * 1024
_READ_WINDOW = 4 * 1024 * 1024

LogEntry = tuple[int, bytes]  # (offset just past the entry, payload)


def _segment_name(start: int) -> str:
    return f"{start:020d}.log"


class IngestLog:
    def __init__(self, directory: Path, *, fsync: bool = True, segment_bytes: int = 64 << 20) -> None:
        self._dir = directory
        self._fsync = fsync
        self._segment_bytes = segment_bytes
        self._dir.mkdir(parents=True, exist_ok=True)
        self._segments: list[int] = sorted(int(p.stem) for p in self._dir.glob("*.log"))
        if not self._segments:
            self._segments = [0]
            (self._dir / _segment_name(0)).touch()
        self._end = self._recover_tail()
        self._durable_end = self._end
        self._fd = os.open(self._dir / _segment_name(self._segments[-1]), os.O_WRONLY | os.O_APPEND)
        self._pending: list[tuple[bytes, Future[int]]] = []
        self._lock = threading.Condition()
        self._durable = threading.Condition()
        self._closed = False
        self._writer = threading.Thread(target=self._write_loop, name="touchline-log-writer", daemon=True)
        self._writer.start()

    # -- recovery ---------------------------------------------------------------

    def _recover_tail(self) -> int:
        start = self._segments[-1]
        path = self._dir / _segment_name(start)
        good = 0
        with open(path, "rb") as f:
            data = f.read()
        pos = 0
        while pos + _HEADER.size <= len(data):
            length, crc = _HEADER.unpack_from(data, pos)
            end = pos + _HEADER.size + length
            if length > _MAX_ENTRY or end > len(data):
                break
            if zlib.crc32(memoryview(data)[pos + _HEADER.size:end]) != crc:
                break
            pos = end
            good = end
        if good != len(data):
            # A torn write from a crash: it was never acknowledged, so drop it.
            with open(path, "r+b") as f:
                f.truncate(good)
                f.flush()
                os.fsync(f.fileno())
        return start + good

    # -- writing ------------------------------------------------------------------

    @property
    def end_offset(self) -> int:
        """Offset past the last durable entry."""
        with self._durable:
            return self._durable_end

    def append_future(self, payload: bytes) -> Future[int]:
        """Queue an entry; the future resolves to its end offset once it is durable."""
        if len(payload) > _MAX_ENTRY:
            raise StoreError(f"log entry of {len(payload)} bytes exceeds {_MAX_ENTRY}")
        fut: Future[int] = Future()
        with self._lock:
            if self._closed:
                raise StoreError("the ingest log is closed")
            self._pending.append((payload, fut))
            self._lock.notify()
        return fut

    async def append(self, payload: bytes) -> int:
        return await asyncio.wrap_future(self.append_future(payload))

    def append_sync(self, payload: bytes) -> int:
        return self.append_future(payload).result()

    def _write_loop(self) -> None:
        while True:
            with self._lock:
                while not self._pending and not self._closed:
                    self._lock.wait()
                if not self._pending and self._closed:
                    return
                batch, self._pending = self._pending, []
            try:
                offsets = self._write_batch(batch)
            except BaseException as exc:  # every waiter must hear about it
                err = StoreError(f"ingest log write failed: {exc}")
                for _, fut in batch:
                    fut.set_exception(err)
                continue
            with self._durable:
                self._durable_end = offsets[-1]
                self._durable.notify_all()
            for (_, fut), off in zip(batch, offsets, strict=True):
                fut.set_result(off)

    def _write_batch(self, batch: list[tuple[bytes, Future[int]]]) -> list[int]:
        chunks: list[bytes] = []
        offsets: list[int] = []
        end = self._end
        for payload, _ in batch:
            chunks.append(_HEADER.pack(len(payload), zlib.crc32(payload)))
            chunks.append(payload)
            end += _HEADER.size + len(payload)
            offsets.append(end)
        buf = memoryview(b"".join(chunks))
        try:
            while buf:
                buf = buf[os.write(self._fd, buf):]
            if self._fsync:
                os.fdatasync(self._fd)
        except OSError:
            # Cut a partial write back off, so later entries stay aligned.
            os.ftruncate(self._fd, self._end - self._segments[-1])
            raise
        self._end = end
        if end - self._segments[-1] >= self._segment_bytes:
            self._roll()
        return offsets

    def _roll(self) -> None:
        os.close(self._fd)
        self._segments.append(self._end)
        path = self._dir / _segment_name(self._end)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        if self._fsync:
            dir_fd = os.open(self._dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)

    # -- reading ------------------------------------------------------------------

    def wait_for(self, offset: int, timeout: float) -> int:
        """Block until the durable end passes ``offset`` or the timeout runs out."""
        with self._durable:
            if self._durable_end <= offset and not self._closed:
                self._durable.wait(timeout)
            return self._durable_end

    def read(
        self, start: int, *, max_bytes: int = 32 << 20, window: int = _READ_WINDOW
    ) -> Iterator[LogEntry]:
        """Durable entries from ``start`` (an entry boundary), up to about ``max_bytes``,
        reading ``window`` bytes of the file at a time (more for a larger entry)."""
        limit = self.end_offset
        segments = list(self._segments)
        read = 0
        for i, seg_start in enumerate(segments):
            seg_end = min(segments[i + 1] if i + 1 < len(segments) else limit, limit)
            if seg_end <= start or seg_start >= limit:
                continue
            path = self._dir / _segment_name(seg_start)
            pos = max(start, seg_start)
            with open(path, "rb") as f:
                # A window at a time, not the rest of the segment: a reader far behind
                # the writer would otherwise hold up to a whole segment per call while
                # it consumes one batch of it.
                want = window
                while pos < seg_end:
                    f.seek(pos - seg_start)
                    data = f.read(min(seg_end - pos, want))
                    view = memoryview(data)
                    p = 0
                    while p + _HEADER.size <= len(data):
                        length, crc = _HEADER.unpack_from(data, p)
                        end = p + _HEADER.size + length
                        if end > len(data):
                            break
                        payload = bytes(view[p + _HEADER.size:end])
                        if zlib.crc32(payload) != crc:
                            raise StoreError(f"ingest log corrupt at offset {pos + p}")
                        p = end
                        read += length
                        yield pos + p, payload
                        if read >= max_bytes:
                            return
                    if p == 0:
                        if len(data) < _HEADER.size or len(data) == seg_end - pos:
                            break  # no whole entry left in this segment
                        # An entry larger than the window: read it whole next time.
                        want = _HEADER.size + _HEADER.unpack_from(data, 0)[0]
                        continue
                    want = window
                    pos += p
            start = seg_end

    def release(self, offset: int) -> None:
        """Delete segments that lie wholly before ``offset`` (applied to every store)."""
        while len(self._segments) > 1 and self._segments[1] <= offset:
            seg = self._segments.pop(0)
            try:
                (self._dir / _segment_name(seg)).unlink()
            except FileNotFoundError:
                pass

    def close(self) -> None:
        with self._lock:
            self._closed = True
            self._lock.notify_all()
        self._writer.join()
        with self._durable:
            self._durable.notify_all()
        os.close(self._fd)
