"""What every finished call leaves behind: a metrics record, a count by outcome, and a
log line when it failed. Pure: the record goes to a callback (the metrics writer)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import msgspec

from broker.calls.call import PendingCall
from broker.calls.scheduler import SERVER_LANE
from exai.errors import BrokerError

__all__ = ["CallRecord", "Tally"]

# Outcome lines keep the logger they have always had, the one log filters name.
log = logging.getLogger("broker.calls.manager")


class CallRecord(msgspec.Struct, frozen=True):
    """What the metrics line of one finished call says."""

    t: float
    session: str
    tool: str
    provider: str | None
    model: str | None
    outcome: str
    latency_ms: float
    queue_ms: float
    worker: int | None
    bytes_in: int
    bytes_out: int
    # The hosted server that served it (None: the daemon's own tools).
    server: str | None = None


class Tally:
    """Counts calls by outcome and hands each one's record on."""

    __slots__ = ("_record", "calls_total", "errors_by_code")

    def __init__(self, record: Callable[[CallRecord], None]) -> None:
        self._record = record
        self.calls_total = 0
        self.errors_by_code: dict[str, int] = {}

    def finished(
        self,
        call: PendingCall,
        outcome: str,
        bytes_out: int,
        error: BrokerError | None,
        now: float,
    ) -> None:
        """A call ended with `outcome` ("ok" or an ErrorCode) at monotonic time `now`."""
        record = CallRecord(
            time.time(),
            call.session.id,
            call.tool,
            # A capped server's lane is the scheduler's business: `server` names it.
            _provider(call.provider),
            call.model,
            outcome,
            (now - call.received_at) * 1000.0,
            ((call.admitted_at or now) - call.received_at) * 1000.0,
            call.worker.slot if call.worker is not None else None,
            len(call.arguments),
            bytes_out,
            call.server,
        )
        if outcome == "ok":
            # The common case, without the error bookkeeping.
            self.calls_total += 1
            self._record(record)
        else:
            self._count(record, error)

    def refused(self, session_id: str, tool: str, error: BrokerError) -> None:
        """A request was refused before it became a call."""
        self._count(
            CallRecord(
                time.time(), session_id, tool, None, None, str(error.code), 0.0, 0.0, None, 0, 0
            ),
            error,
        )

    def _count(self, record: CallRecord, error: BrokerError | None) -> None:
        outcome = record.outcome
        if outcome != "ok":
            self.errors_by_code[outcome] = self.errors_by_code.get(outcome, 0) + 1
            log.info(
                "call %r of session %s -> %s%s",
                record.tool[:64],
                record.session[:8],
                outcome,
                f": {error.message}" if error is not None else "",
            )
        self.calls_total += 1
        self._record(record)


def _provider(lane: str | None) -> str | None:
    return None if lane is not None and lane.startswith(SERVER_LANE) else lane
