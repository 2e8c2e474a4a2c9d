"""Requests made durable before their records are validated.

Sensors' normal path answers 200 whatever its request holds (protocols.md: its
clients resend forever on an error status and cannot be told which record of a
batch was refused). So for it the collector only undoes the form, the crc check and
base64, and writes the request's JSON, still gzipped if it came so, to the ingest
log; the ingest pipeline gunzips, parses and validates as it applies the batch and
reports what it refuses (a whole batch, or records by index) in the ingest status,
where the collector reported them before. The work runs once either way; it just
leaves the acknowledgement path, which then costs a few microseconds per event
instead of tens, and the log holds the compressed bytes.

A raw log entry is one line of JSON (protocol, request project, receive time),
a newline, then the body: JSON text or gzip of it. Decoding a body never depends on
anything but the entry, so a replay decodes it exactly as the first time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import orjson

from ..errors import PayloadError
from .sink import Sink

__all__ = ["RawBatch", "RawSink", "is_raw_entry"]


@dataclass(frozen=True, slots=True)
class RawBatch:
    """One request's records as sent, with what decoding them later needs."""

    protocol: str
    project: str  # the request's project; a record may still name its own
    received_ms: int
    body: bytes  # JSON text (a record or an array of records), or gzip of it

    def encode(self) -> bytes:
        head = orjson.dumps({"raw": self.protocol, "project": self.project,
                             "received_ms": self.received_ms})
        return head + b"\n" + self.body

    @classmethod
    def decode(cls, payload: bytes) -> RawBatch:
        head, _, body = payload.partition(b"\n")
        try:
            meta = orjson.loads(head)
            return cls(protocol=str(meta["raw"]), project=str(meta["project"]),
                       received_ms=int(meta["received_ms"]), body=body)
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise PayloadError("log entry", "not a raw batch header") from None


def is_raw_entry(payload: bytes) -> bool:
    """Raw entries start with their header object; decoded ones are a JSON array."""
    return payload[:1] == b"{"


@runtime_checkable
class RawSink(Sink, Protocol):
    """A sink that also takes requests whose records it validates later."""

    async def submit_raw(self, batch: RawBatch) -> None:
        """Make the batch durable; return only once it is on disk."""
        ...
