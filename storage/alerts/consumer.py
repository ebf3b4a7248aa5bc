"""
Read a night's alert stream in a consumer group: the Python API for alert brokers.

Delivery is at least once. The group is created at start (``BUSYGROUP`` is fine, ``MKSTREAM``);
entries are read with XREADGROUP, decoded and validated, handed to the caller and XACKed only
after the caller's handler succeeded (`AlertConsumer.run`) or the caller acked them
(`AlertConsumer.ack`). Entries pending longer than ``alerts.consumer_idle_timeout_s`` (a consumer
died, or a handler failed) are reclaimed with XAUTOCLAIM by a live consumer; one whose handler
failed ``alerts.max_deliveries`` times, or one that is not a valid packet, goes to the dead-letter
stream ``<stream>:dead`` with the error and is acked, and the consumer keeps going.

No single entry can stop a group: anyone who can XADD may write anything, so field names and
values are kept as the bytes they are (a field name that is not UTF-8 is dead-lettered as
``field:<the same bytes>``), and every failure tied to one entry (it does not decode or validate,
its ``cutoutStoreKey`` names a key outside the stream's side store, of another type, or one that
does not answer, the handler raised) dead-letters that entry with the reason, never the consumer.
Only failures of Redis itself (unreachable, wrong password) end `AlertConsumer.run`.

Examples
--------
>>> with AlertConsumer(client, "my-broker", night="20261125") as consumer:  # doctest: +SKIP
...     for received in consumer:
...         store(received.alert)
...         consumer.ack(received)

Notes
-----
Not thread-safe: one `AlertConsumer` per thread; many consumers (threads, processes, hosts) may
share a group, each with its own consumer name.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Literal, Self, cast

import redis
from redis.typing import EncodableT, FieldT

from ...config import AlertsConfig
from .connection import client_url
from .entry import cutout_key, dead_letter_stream, decode_entry, stream_name
from .errors import AlertDecodeError, RedisAuthError, RedisUnavailableError
from .packet import Alert, Cutout, CutoutKind

__all__ = [
    "AlertConsumer",
    "ConsumeReport",
    "DeadLetter",
    "ReceivedAlert",
    "default_consumer_name",
    "latest_alerts",
]

log = logging.getLogger(__name__)

_KINDS = frozenset(kind.value for kind in CutoutKind)
_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)
#: Handler errors remembered per pending entry (for the dead letter's reason); oldest dropped first.
_MAX_REMEMBERED_ERRORS = 10_000


def default_consumer_name() -> str:
    """Return ``<host>-<pid>``, unique among live processes of a group."""
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass(frozen=True, slots=True)
class ReceivedAlert:
    """
    One alert read from the stream, not yet acknowledged. Stable.

    Attributes
    ----------
    stream : str
    entry_id : str
        The stream entry id (``<ms>-<seq>``): pass the object to `AlertConsumer.ack`.
    alert : Alert
        Decoded and validated; with ``resolve_cutouts`` its side-store cutouts are inline.
    schema_version : str
        The writer schema.
    reclaimed : bool
        Delivered before to a consumer that did not ack it (at-least-once delivery).
    """

    stream: str
    entry_id: str
    alert: Alert
    schema_version: str
    reclaimed: bool = False


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """An entry moved to the dead-letter stream, and why. Stable."""

    stream: str
    entry_id: str
    error: str


@dataclass(frozen=True, slots=True)
class ConsumeReport:
    """
    What `AlertConsumer.run` did. Stable.

    Attributes
    ----------
    handled : int
        Alerts whose handler succeeded (acked).
    failed : int
        Handler failures (left pending: redelivered after the idle timeout).
    dead_lettered : int
    reclaimed : int
        Alerts taken over from idle pending entries.
    wall_seconds : float
    """

    handled: int = 0
    failed: int = 0
    dead_lettered: int = 0
    reclaimed: int = 0
    wall_seconds: float = 0.0


class AlertConsumer:
    """
    One consumer of a group on a night's alert stream. Stable.

    Parameters
    ----------
    client : redis.Redis
        From `~skyblink.storage.alerts.connect`.
    group : str
        Consumer group (one per broker or application).
    night : str, optional
        Names the stream through ``config.stream``; give ``night`` or ``stream``.
    stream : str, optional
        The stream's full name.
    consumer : str, optional
        This consumer's name in the group (default ``<host>-<pid>``); reuse it after a restart to
        take back its own pending entries at once.
    config : AlertsConfig, optional
        Idle timeout, max deliveries, read count, block time, retries.
    start : {"earliest", "latest"}, optional
        Where a new group starts reading (default: the start of the stream).
    resolve_cutouts : bool, optional
        Fetch side-store cutouts into each alert (one pipelined round trip per read).
    on_dead_letter : callable, optional
        Called with each `DeadLetter` (after it is written and acked).

    Raises
    ------
    ValueError
        Neither or both of night and stream.
    """

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        *,
        night: str | None = None,
        stream: str | None = None,
        consumer: str | None = None,
        config: AlertsConfig | None = None,
        start: Literal["earliest", "latest"] = "earliest",
        resolve_cutouts: bool = False,
        on_dead_letter: Callable[[DeadLetter], None] | None = None,
    ) -> None:
        if (night is None) == (stream is None):
            msg = f"give exactly one of night and stream, got night={night!r}, stream={stream!r}"
            raise ValueError(msg)
        if not group:
            msg = f"group must be a non-empty name, got {group!r}"
            raise ValueError(msg)
        self.config = config or AlertsConfig()
        self.stream = stream if stream is not None else stream_name(self.config.stream, night)  # type: ignore[arg-type]
        self.dead_stream = dead_letter_stream(self.stream)
        self.group = group
        self.consumer = consumer or default_consumer_name()
        self.start = start
        self.resolve_cutouts = resolve_cutouts
        self.on_dead_letter = on_dead_letter
        self._client = client
        self._url = client_url(client)
        self._opened = False
        self._own_pending_cursor: str | None = "0"
        self._claim_cursor = "0-0"
        self._next_claim = 0.0
        self.dead_lettered = 0
        self.reclaimed = 0
        self._handler_errors: dict[str, str] = {}

    # ------------------------------------------------------------------------------- lifecycle
    def open(self) -> None:
        """
        Create the group if absent (idempotent) and probe the connection.

        Raises
        ------
        RedisAuthError, RedisUnavailableError
        """
        self._call(self._create_group)
        self._opened = True

    def _create_group(self) -> None:
        try:
            self._client.xgroup_create(self.stream, self.group, id="0" if self.start == "earliest" else "$", mkstream=True)
            log.info("created consumer group %s on %s", self.group, self.stream)
        except redis.exceptions.ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise

    def close(self) -> None:
        """Stop using the consumer; unacked entries stay pending for the group."""
        self._opened = False

    def __enter__(self) -> Self:
        self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- calls
    def _call(self, fn: Callable[[], Any]) -> Any:
        """Run one Redis round trip with the configured retries; recreate a vanished group."""
        attempts = self.config.retries + 1
        for attempt in range(attempts):
            try:
                return fn()
            except redis.exceptions.AuthenticationError:
                raise RedisAuthError(self._url, "invalid user name or password") from None
            except redis.exceptions.ResponseError as exc:
                if "NOGROUP" in str(exc):  # the server lost the group (restart without persistence)
                    self._create_group()
                    continue
                if "NOAUTH" in str(exc) or "WRONGPASS" in str(exc):
                    raise RedisAuthError(self._url, "the server requires a password") from None
                raise
            except _RETRYABLE as exc:
                if attempt + 1 == attempts:
                    raise RedisUnavailableError(self._url, attempts, f"{type(exc).__name__}: {exc}") from None
                delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt)
                log.warning("Redis at %s unreachable (%s); retry in %.2f s", self._url, type(exc).__name__, delay)
                time.sleep(delay)  # backoff between retries of a real network call
        raise RedisUnavailableError(self._url, attempts, "the consumer group kept vanishing")

    # ---------------------------------------------------------------------------------- read
    def poll(self, *, count: int | None = None, block_ms: int | None = None) -> list[ReceivedAlert]:
        """
        Return the next alerts for this consumer: its own earlier pending ones, reclaimed idle
        ones, then new ones (blocking up to ``block_ms`` when there is nothing else).

        Parameters
        ----------
        count : int, optional
            Most entries per read (default: config read_count).
        block_ms : int, optional
            Longest wait for new entries (default: config block_ms; 0 does not block).

        Returns
        -------
        list of ReceivedAlert
            Empty when nothing arrived in time. Malformed entries are dead-lettered, not returned.

        Raises
        ------
        RedisAuthError, RedisUnavailableError
        """
        if not self._opened:
            self.open()
        count = count or self.config.read_count
        block = self.config.block_ms if block_ms is None else block_ms
        raw: list[tuple[str, dict[bytes, bytes] | None, bool]] = []
        if self._own_pending_cursor is not None:
            raw = self._read_own_pending(count)
        if not raw:
            raw = self._reclaim(count)
        if not raw:
            raw = self._read_new(count, block)
        return self._decode(raw)

    def _read_own_pending(self, count: int) -> list[tuple[str, dict[bytes, bytes] | None, bool]]:
        cursor = self._own_pending_cursor or "0"
        reply = self._call(
            lambda: self._client.xreadgroup(self.group, self.consumer, {self.stream: cursor}, count=count)
        )
        entries = reply[0][1] if reply else []
        if not entries:
            self._own_pending_cursor = None
            return []
        self._own_pending_cursor = _text(entries[-1][0])
        return [(_text(eid), fields, True) for eid, fields in entries]

    def _reclaim(self, count: int) -> list[tuple[str, dict[bytes, bytes] | None, bool]]:
        now = time.monotonic()
        if now < self._next_claim:
            return []
        idle_ms = int(self.config.consumer_idle_timeout_s * 1000)
        reply = self._call(
            lambda: self._client.xautoclaim(
                self.stream, self.group, self.consumer, min_idle_time=idle_ms, start_id=self._claim_cursor, count=count
            )
        )
        cursor, entries = _text(reply[0]), reply[1]
        self._claim_cursor = cursor
        if cursor == "0-0":
            # A full pass over the pending list: look again in a fraction of the idle timeout.
            self._next_claim = now + min(self.config.consumer_idle_timeout_s / 4, 5.0)
        live = [(_text(eid), fields, True) for eid, fields in entries if fields is not None]
        if not live:
            return []
        self.reclaimed += len(live)
        log.info("%s reclaimed %d idle entr(y/ies) of %s", self.consumer, len(live), self.stream)
        return self._drop_poison(live)

    def _drop_poison(
        self, entries: list[tuple[str, dict[bytes, bytes] | None, bool]]
    ) -> list[tuple[str, dict[bytes, bytes] | None, bool]]:
        ids = [eid for eid, _, _ in entries]
        pending = self._call(
            lambda: self._client.xpending_range(
                self.stream, self.group, min=ids[0], max=ids[-1], count=len(ids) + 1000, consumername=self.consumer
            )
        )
        deliveries = {_text(p["message_id"]): int(p["times_delivered"]) for p in pending}
        keep: list[tuple[tuple[str, dict[bytes, bytes] | None, bool], int]] = []
        poison: list[tuple[tuple[str, dict[bytes, bytes] | None, bool], int]] = []
        for entry in entries:
            n = deliveries.get(entry[0], 0)
            (poison if n > self.config.max_deliveries else keep).append((entry, n))
        if poison:
            self._dead_letter(
                [(eid, fields, self._handler_failure(eid, n - 1)) for (eid, fields, _), n in poison]
            )
        return [entry for entry, _ in keep]

    def _handler_failure(self, entry_id: str, deliveries: int) -> str:
        reason = f"handler failed on {deliveries} deliveries (alerts.max_deliveries = {self.config.max_deliveries})"
        last = self._handler_errors.pop(entry_id, None)
        return f"{reason}; last error: {last}" if last else reason

    def _remember_handler_error(self, entry_id: str, error: BaseException) -> None:
        if len(self._handler_errors) >= _MAX_REMEMBERED_ERRORS:
            self._handler_errors.pop(next(iter(self._handler_errors)))
        self._handler_errors[entry_id] = f"{type(error).__name__}: {error}"[:2000]

    def _read_new(self, count: int, block_ms: int) -> list[tuple[str, dict[bytes, bytes] | None, bool]]:
        reply = self._call(
            lambda: self._client.xreadgroup(
                self.group, self.consumer, {self.stream: ">"}, count=count, block=block_ms or None
            )
        )
        entries = reply[0][1] if reply else []
        return [(_text(eid), fields, False) for eid, fields in entries]

    def _decode(self, raw: Sequence[tuple[str, dict[bytes, bytes] | None, bool]]) -> list[ReceivedAlert]:
        received: list[ReceivedAlert] = []
        bad: list[tuple[str, dict[bytes, bytes] | None, str]] = []
        trimmed: list[str] = []
        for entry_id, fields, reclaimed in raw:
            if fields is None:  # trimmed by MAXLEN while pending
                trimmed.append(entry_id)
                continue
            try:
                alert, schema = decode_entry(fields, entry_id=entry_id)
            except AlertDecodeError as exc:
                bad.append((entry_id, fields, str(exc)))
                continue
            except Exception as exc:  # noqa: BLE001 - whatever a hostile entry provokes, it must not stop the group
                bad.append((entry_id, fields, f"entry {entry_id}: does not decode ({type(exc).__name__}: {exc})"))
                continue
            received.append(ReceivedAlert(self.stream, entry_id, alert, schema.version, reclaimed))
        if trimmed:
            self._call(lambda: self._client.xack(self.stream, self.group, *trimmed))
        if self.resolve_cutouts:
            received = self._with_side_store_cutouts(received, {eid: fields for eid, fields, _ in raw}, bad)
        if bad:
            self._dead_letter(bad)
        return received

    def _with_side_store_cutouts(
        self,
        received: list[ReceivedAlert],
        fields_of: dict[str, dict[bytes, bytes] | None],
        bad: list[tuple[str, dict[bytes, bytes] | None, str]],
    ) -> list[ReceivedAlert]:
        """
        Fetch side-store cutouts (one pipelined round trip); an entry whose key is outside this
        stream's side store, of another type, or refused by the server joins ``bad``.
        """
        prefix = cutout_key(self.stream, 0)[:-1]
        wanted: list[ReceivedAlert] = []
        for r in received:
            key = r.alert.cutout_store_key
            if key and not key.startswith(prefix):
                reason = f"entry {r.entry_id}: cutoutStoreKey {key[:200]!r} is not in this stream's side store ({prefix}*)"
                bad.append((r.entry_id, fields_of.get(r.entry_id), reason))
            elif key:
                wanted.append(r)
        refused = {entry_id for entry_id, _, _ in bad}

        def fetch() -> list[Any]:
            pipe = self._client.pipeline(transaction=False)
            for r in wanted:
                key = r.alert.cutout_store_key
                assert key is not None  # wanted holds only alerts with a side-store key
                pipe.hgetall(key)
            return list(pipe.execute(raise_on_error=False))

        blobs = dict(zip((r.entry_id for r in wanted), self._call(fetch) if wanted else [], strict=True))
        out = []
        for r in received:
            if r.entry_id in refused:
                continue
            hashes = blobs.get(r.entry_id)
            if hashes is None:
                out.append(r)
                continue
            try:
                if isinstance(hashes, Exception):
                    raise hashes
                if not hashes:
                    log.warning("cutouts of alert %d expired from the side store", r.alert.alert_id)
                cutouts = {
                    CutoutKind(_text(kind)): Cutout(f"{r.alert.alert_id}-{_text(kind)}.fits.gz", data)
                    for kind, data in hashes.items()
                    if _text(kind) in _KINDS
                }
                alert = r.alert.with_cutouts(cutouts)
            except _RETRYABLE:
                raise
            except Exception as exc:  # noqa: BLE001 - one entry's cutouts must not stop the group
                key = r.alert.cutout_store_key
                reason = f"entry {r.entry_id}: cutouts at {key[:200]!r} cannot be read ({type(exc).__name__}: {exc})"  # type: ignore[index]
                bad.append((r.entry_id, fields_of.get(r.entry_id), reason))
                continue
            out.append(ReceivedAlert(r.stream, r.entry_id, alert, r.schema_version, r.reclaimed))
        return out

    def _dead_letter(self, bad: Sequence[tuple[str, dict[bytes, bytes] | None, str]]) -> None:
        def move() -> None:
            pipe = self._client.pipeline(transaction=False)
            for entry_id, fields, error in bad:
                letter: dict[FieldT, EncodableT] = {
                    "error": error,
                    "source_entry_id": entry_id,
                    "group": self.group,
                    "consumer": self.consumer,
                }
                for name, value in (fields or {}).items():  # the entry's own bytes, whatever they are
                    letter[b"field:" + name if isinstance(name, bytes) else f"field:{name}"] = value
                pipe.xadd(self.dead_stream, letter, maxlen=self.config.maxlen, approximate=True)
            pipe.xack(self.stream, self.group, *(entry_id for entry_id, _, _ in bad))
            pipe.execute()

        self._call(move)
        for entry_id, _, error in bad:
            self._handler_errors.pop(entry_id, None)
            self.dead_lettered += 1
            log.error("dead-lettered entry %s of %s to %s: %s", entry_id, self.stream, self.dead_stream, error)
            if self.on_dead_letter is not None:
                self.on_dead_letter(DeadLetter(self.stream, entry_id, error))

    # ----------------------------------------------------------------------------------- ack
    def ack(self, received: ReceivedAlert | Iterable[ReceivedAlert]) -> int:
        """
        Acknowledge handled alerts (one round trip for all of them).

        Parameters
        ----------
        received : ReceivedAlert or iterable of ReceivedAlert

        Returns
        -------
        int
            Entries acknowledged now (0 for ones acked before or reclaimed by another consumer
            and acked there).

        Raises
        ------
        RedisUnavailableError
        """
        items = [received] if isinstance(received, ReceivedAlert) else list(received)
        ids = [r.entry_id for r in items]
        if not ids:
            return 0
        return int(self._call(lambda: self._client.xack(self.stream, self.group, *ids)))

    def __iter__(self) -> Iterator[ReceivedAlert]:
        """Yield alerts forever (blocking reads); the caller acks each once handled."""
        while True:
            yield from self.poll()

    def run(
        self,
        handler: Callable[[ReceivedAlert], None],
        *,
        max_alerts: int | None = None,
        idle_exit_s: float | None = None,
        stop: threading.Event | None = None,
        before_ack: Callable[[Sequence[ReceivedAlert]], None] | None = None,
    ) -> ConsumeReport:
        """
        Hand every alert to ``handler`` and ack those it handled, a read at a time.

        Parameters
        ----------
        handler : callable
            Called with each `ReceivedAlert`; it returns once the alert is durably handled. An
            exception leaves the entry pending (redelivered after the idle timeout, then
            dead-lettered after ``max_deliveries``) and the loop goes on.
        max_alerts : int, optional
            Return after this many handled alerts.
        idle_exit_s : float, optional
            Return when nothing arrived for this long.
        stop : threading.Event, optional
            Return when set (checked between reads).
        before_ack : callable, optional
            Called with the alerts of one read whose handlers succeeded, before they are acked
            (a sink makes its output durable here: one fsync a read, not one an alert).

        Returns
        -------
        ConsumeReport

        Raises
        ------
        RedisAuthError, RedisUnavailableError
        """
        start = time.perf_counter()
        handled = failed = 0
        dead0, reclaimed0 = self.dead_lettered, self.reclaimed
        last_seen = time.monotonic()
        while not (stop is not None and stop.is_set()):
            remaining = None if max_alerts is None else max_alerts - handled
            if remaining is not None and remaining <= 0:
                break
            block = self.config.block_ms
            if idle_exit_s is not None:
                block = max(1, min(block, int(idle_exit_s * 1000)))
            batch = self.poll(count=min(self.config.read_count, remaining or self.config.read_count), block_ms=block)
            if not batch:
                if idle_exit_s is not None and time.monotonic() - last_seen >= idle_exit_s:
                    break
                continue
            last_seen = time.monotonic()
            done: list[ReceivedAlert] = []
            for received in batch:
                try:
                    handler(received)
                except Exception as exc:
                    failed += 1
                    self._remember_handler_error(received.entry_id, exc)
                    log.exception("handler failed on entry %s (alert %d); left pending", received.entry_id, received.alert.alert_id)
                else:
                    done.append(received)
                    self._handler_errors.pop(received.entry_id, None)
            if done and before_ack is not None:
                before_ack(done)
            self.ack(done)
            handled += len(done)
        return ConsumeReport(
            handled, failed, self.dead_lettered - dead0, self.reclaimed - reclaimed0, time.perf_counter() - start
        )


def latest_alerts(client: redis.Redis, stream: str, count: int) -> tuple[list[ReceivedAlert], list[DeadLetter]]:
    """
    Read the last entries of a stream without a group (``skyblink alerts tail``).

    Parameters
    ----------
    client : redis.Redis
    stream : str
    count : int
        Entries to read, newest last.

    Returns
    -------
    alerts : list of ReceivedAlert
        Oldest first; empty when the stream is empty or absent.
    malformed : list of DeadLetter
        Entries that do not decode (reported, not moved: tail reads only).
    """
    # A client that does not decode responses: ids and fields come back as bytes.
    entries = cast(list[tuple[bytes, dict[bytes, bytes]]], client.xrevrange(stream, count=count))
    alerts: list[ReceivedAlert] = []
    malformed: list[DeadLetter] = []
    for raw_id, fields in reversed(entries):
        entry_id = _text(raw_id)
        try:
            alert, schema = decode_entry(fields, entry_id=entry_id)
        except AlertDecodeError as exc:
            malformed.append(DeadLetter(stream, entry_id, str(exc)))
            continue
        except Exception as exc:  # noqa: BLE001 - a hostile entry is reported, never fatal
            malformed.append(DeadLetter(stream, entry_id, f"entry {entry_id}: does not decode ({type(exc).__name__}: {exc})"))
            continue
        alerts.append(ReceivedAlert(stream, entry_id, alert, schema.version))
    return alerts, malformed


def _text(value: bytes | str) -> str:
    """Decode leniently: a name that is not UTF-8 keeps its bytes as escapes, never raises."""
    return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value
