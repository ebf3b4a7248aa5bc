"""
Publish alerts to a night's Redis stream: batched, idempotent, and nothing lost.

Each alert is one EVALSHA of a Lua script, pipelined a batch at a time. The script checks the
stream's dedup hash and, only for an alertId not seen before, XADDs the entry (``MAXLEN ~``)
and records the alertId: the check and the write are one atomic step, so a rerun, a retried
batch or a replayed spool never publishes a duplicate. Side-store cutouts are written (HSET with
a TTL) just before their entry in the same pipeline: an entry never points at absent cutouts,
and writing them twice is harmless.

When Redis does not answer, a batch is retried with exponential backoff (``alerts.retries``,
``alerts.backoff_s``, ``alerts.backoff_max_s``) and then written to the local spool; the spool is
replayed when the producer starts and when Redis answers again.

Sent is not delivered: a server killed after it answered may come back without the entries (no
persistence, or the last second of an ``appendfsync everysec`` file). `AlertProducer.confirm`
asks the stream itself which of a run's alert ids it lacks, so that the caller re-sends them and
reports what is in Redis, not what was sent.

Notes
-----
Not thread-safe: one producer per thread (they may share a stream and a spool directory).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, fields
from types import TracebackType
from typing import Any, Self

import redis

from ...config import AlertsConfig
from .connection import client_url
from .edge import EdgeFilter
from .entry import EncodedAlert, cutout_key, dedup_key, encode_alert, stream_name
from .errors import RedisAuthError, SpoolError
from .packet import Alert
from .schema import AlertSchema, latest_schema
from .spool import AlertSpool

__all__ = ["AlertEncoder", "AlertProducer", "PublishReport"]

log = logging.getLogger(__name__)

# KEYS: stream, dedup hash.
# ARGV: alertId, maxlen, dedup ttl, then the entry's field/value pairs.
# Returns {1, new entry id} or {0, the entry id published before}.
PUBLISH_SCRIPT = """
local seen = redis.call('HGET', KEYS[2], ARGV[1])
if seen then
  return {0, seen}
end
local entry = {}
for i = 4, #ARGV do
  entry[#entry + 1] = ARGV[i]
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(entry))
redis.call('HSET', KEYS[2], ARGV[1], id)
redis.call('EXPIRE', KEYS[2], ARGV[3])
return {1, id}
"""

# KEYS: stream. ARGV: entry ids. Returns, per id, 1 when the stream holds that entry, else 0:
# the check runs in Redis, so the entries (tens of kilobytes each, with inline cutouts) are not
# sent back to be looked at. A Rubin-like visit's 12,676 entries (453 MB): 1.2-1.3 s, against
# 2.6-2.9 s read back over loopback (2 cores, 2026-12-07); over a network, 450 MB more.
HAS_ENTRIES_SCRIPT = """
local found = {}
for i = 1, #ARGV do
  found[i] = #redis.call('XRANGE', KEYS[1], ARGV[i], ARGV[i], 'COUNT', 1)
end
return found
"""

# KEYS: stream. Returns the id of its first entry (false when empty), without the entry.
FIRST_ENTRY_SCRIPT = """
local first = redis.call('XRANGE', KEYS[1], '-', '+', 'COUNT', 1)
if #first == 0 then
  return false
end
return first[1][1]
"""

_RETRYABLE = (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError)


def _entry_order(entry_id: bytes | str) -> tuple[int, int]:
    """Return a stream entry id (``ms-seq``) as a sortable pair."""
    text = entry_id.decode() if isinstance(entry_id, bytes) else entry_id
    ms, _, seq = text.partition("-")
    return int(ms), int(seq or 0)


@dataclass(frozen=True, slots=True)
class PublishReport:
    """
    What one publish call did. Stable.

    Attributes
    ----------
    published : int
        New stream entries.
    duplicates : int
        Alerts already in the stream (rerun, retried batch, replayed spool): skipped.
    filtered : int
        Alerts below the edge score threshold: not sent.
    spooled : int
        Alerts written to the local spool because Redis stayed unreachable.
    replayed : int
        Alerts taken from the spool and published or found already published.
    retries : int
        Batch retries after a Redis error.
    nbytes : int
        Bytes of the new entries (fields and side-store cutouts).
    wall_seconds : float
    """

    published: int = 0
    duplicates: int = 0
    filtered: int = 0
    spooled: int = 0
    replayed: int = 0
    retries: int = 0
    nbytes: int = 0
    wall_seconds: float = 0.0

    def __add__(self, other: PublishReport) -> PublishReport:
        """Return the sum of two reports."""
        return PublishReport(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass
class _Tally:
    published: int = 0
    duplicates: int = 0
    filtered: int = 0
    spooled: int = 0
    replayed: int = 0
    retries: int = 0
    nbytes: int = 0
    start: float = field(default_factory=time.perf_counter)

    def report(self) -> PublishReport:
        return PublishReport(
            self.published,
            self.duplicates,
            self.filtered,
            self.spooled,
            self.replayed,
            self.retries,
            self.nbytes,
            time.perf_counter() - self.start,
        )


class AlertEncoder:
    """
    Edge-filter and encode alerts for one night's stream: what `AlertProducer.publish` sends,
    made where no Redis is needed (the producer's thread, or processes building packets beside
    it for `AlertProducer.publish_encoded`). Stable.

    Parameters
    ----------
    night : str
        Names the stream (``alerts.stream`` template).
    config : AlertsConfig, optional
        Stream template, cutout placement, edge threshold (default: the embedded defaults).
    schema : AlertSchema, optional
        Writer schema (default: the latest).
    """

    def __init__(self, night: str, *, config: AlertsConfig | None = None, schema: AlertSchema | None = None) -> None:
        self.config = config or AlertsConfig()
        self.stream = stream_name(self.config.stream, night)
        self.schema = schema or latest_schema()
        self.edge = EdgeFilter(self.config.edge_min_score)
        #: Alerts the edge filter has held back so far (not encoded, not to be sent).
        self.filtered = 0

    def encode(self, alert: Alert) -> EncodedAlert:
        """
        Encode one alert for this stream and cutout placement.

        Raises
        ------
        AlertEncodeError
            The alert does not fit the schema.
        """
        return encode_alert(alert, self.stream, cutouts=self.config.cutouts, schema=self.schema)

    def encode_kept(self, alerts: Iterable[Alert], *, sent: list[int] | None = None) -> Iterator[EncodedAlert]:
        """
        Yield the encoded alerts that pass the edge filter, in order; count the others in `filtered`.

        Parameters
        ----------
        alerts : iterable of Alert
        sent : list of int, optional
            Receives the id of every alert yielded.

        Raises
        ------
        AlertEncodeError
            An alert does not fit the schema (raised when it is reached).
        """
        for alert in alerts:
            if self.edge.keep(alert):
                if sent is not None:
                    sent.append(alert.alert_id)
                yield self.encode(alert)
            else:
                self.filtered += 1


class AlertProducer:
    """
    Publish the alerts of one night to its stream. Stable.

    Parameters
    ----------
    client : redis.Redis
        From `~skyblink.storage.alerts.connect` (redis-py's own retries off).
    night : str
        Names the stream (``alerts.stream`` template).
    config : AlertsConfig, optional
        Stream template, MAXLEN, batch size, retries, spool, cutout placement, dedup TTL, edge
        threshold (default: the embedded defaults).
    spool : AlertSpool, optional
        Default: a spool in ``config.spool_dir``.
    schema : AlertSchema, optional
        Writer schema (default: the latest).

    Examples
    --------
    >>> with AlertProducer(client, "20261125", config=cfg.alerts) as producer:  # doctest: +SKIP
    ...     report = producer.publish(alerts)
    """

    def __init__(
        self,
        client: redis.Redis,
        night: str,
        *,
        config: AlertsConfig | None = None,
        spool: AlertSpool | None = None,
        schema: AlertSchema | None = None,
    ) -> None:
        self.config = config or AlertsConfig()
        self.night = night
        self.encoder = AlertEncoder(night, config=self.config, schema=schema)
        self.stream = self.encoder.stream
        self.spool = spool or AlertSpool(self.config.spool_dir)
        self._client = client
        self._sha: str | None = None
        # Loaded on first use, and again after a restart.
        self._has_entries = client.register_script(HAS_ENTRIES_SCRIPT)
        self._first_entry = client.register_script(FIRST_ENTRY_SCRIPT)
        self._degraded = False
        self._url = client_url(client)
        #: What the spool replay at `open` did (the alerts an earlier run could not deliver).
        self.opened = PublishReport()
        #: The ids of the alerts written to the spool by this producer (not in Redis).
        self.spooled_ids: set[int] = set()

    # ------------------------------------------------------------------------------- lifecycle
    def open(self) -> PublishReport:
        """
        Register the publish script and replay the spool.

        Returns
        -------
        PublishReport
            What the replay did.

        Raises
        ------
        RedisAuthError
            Wrong or missing credentials.
        SpoolError
            A spool file is unreadable.
        """
        try:
            self._load_script()
        except _RETRYABLE as exc:
            if isinstance(exc, redis.exceptions.AuthenticationError):
                raise RedisAuthError(self._url, "invalid user name or password") from None
            log.warning("Redis at %s unreachable at producer start (%s); publishing will retry", self._url, exc)
            return PublishReport()
        return self.replay_spool()

    def close(self) -> None:
        """Nothing is buffered between calls; present for symmetry with `open`."""

    def __enter__(self) -> Self:
        self.opened = self.open()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _load_script(self) -> str:
        self._sha = str(self._client.script_load(PUBLISH_SCRIPT))
        return self._sha

    # ---------------------------------------------------------------------------------- encode
    def encode(self, alert: Alert) -> EncodedAlert:
        """
        Encode one alert for this producer's stream and cutout placement.

        Parameters
        ----------
        alert : Alert

        Returns
        -------
        EncodedAlert

        Raises
        ------
        AlertEncodeError
            The alert does not fit the schema.
        """
        return self.encoder.encode(alert)

    # --------------------------------------------------------------------------------- publish
    def publish(self, alerts: Iterable[Alert], *, sent: list[int] | None = None) -> PublishReport:
        """
        Encode, edge-filter and publish alerts in pipelined batches.

        Parameters
        ----------
        alerts : iterable of Alert
        sent : list of int, optional
            Receives the id of every alert that passed the edge filter (published, found already
            published or spooled): what `confirm` should find in the stream.

        Returns
        -------
        PublishReport

        Raises
        ------
        AlertEncodeError
            An alert does not fit the schema (alerts of earlier batches are published).
        RedisAuthError
            Wrong or missing credentials.
        SpoolError
            Redis was unreachable and the spool could not be written.
        """
        tally = _Tally()
        before = self.encoder.filtered
        try:
            self._publish_into(tally, self.encoder.encode_kept(alerts, sent=sent))
        finally:
            tally.filtered += self.encoder.filtered - before
        return tally.report()

    def publish_encoded(self, entries: Iterable[EncodedAlert]) -> PublishReport:
        """
        Publish alerts encoded beforehand (e.g. by worker processes) in pipelined batches.

        Parameters
        ----------
        entries : iterable of EncodedAlert

        Returns
        -------
        PublishReport

        Raises
        ------
        RedisAuthError, SpoolError
            As `publish`.
        """
        tally = _Tally()
        self._publish_into(tally, iter(entries))
        return tally.report()

    def replay_spool(self) -> PublishReport:
        """
        Publish every spooled alert (idempotent) and delete the spool files that fully made it.

        Returns
        -------
        PublishReport
            ``replayed`` counts the spooled alerts that are now in their stream.

        Raises
        ------
        RedisAuthError, SpoolError
            As `publish`.
        """
        tally = _Tally()
        for claimed, entries in self.spool.claim():
            before = tally.spooled
            try:
                self._publish_into(tally, iter(entries), from_spool=True)
            except BaseException:
                self.spool.release(claimed)
                raise
            if tally.spooled > before:
                # Redis went away again: the alerts of this file are spooled anew.
                self.spool.done(claimed)
                break
            self.spool.done(claimed)
            log.info("replayed %d spooled alert(s) from %s", len(entries), claimed.name)
        return tally.report()

    def _publish_into(self, tally: _Tally, entries: Iterator[EncodedAlert], *, from_spool: bool = False) -> None:
        """
        Publish ``entries`` in batches of ``alerts.batch_size``, each sent in a thread of its own
        while the caller's thread takes and encodes the next: the socket's writes and Redis' work
        overlap the building of packets. One batch is in flight at a time, so batches reach the
        stream in order, and the batch before an error is sent (or spooled) before it is raised.
        """
        batch: list[EncodedAlert] = []
        with ThreadPoolExecutor(1, thread_name_prefix="alert-sender") as sender:
            in_flight: Future[None] | None = None
            for entry in entries:
                batch.append(entry)
                if len(batch) >= self.config.batch_size:
                    if in_flight is not None:
                        in_flight.result()  # its error (auth, spool) stops the publish here
                    in_flight = sender.submit(self._publish_batch, tally, batch, from_spool=from_spool)
                    batch = []
            if in_flight is not None:
                in_flight.result()
        if batch:
            self._publish_batch(tally, batch, from_spool=from_spool)

    def _publish_batch(self, tally: _Tally, batch: Sequence[EncodedAlert], *, from_spool: bool) -> None:
        attempts = 1 if self._degraded else self.config.retries + 1
        for attempt in range(attempts):
            try:
                new, duplicates, nbytes = self._send(batch)
            except redis.exceptions.AuthenticationError:
                raise RedisAuthError(self._url, "invalid user name or password") from None
            except _RETRYABLE as exc:
                if attempt + 1 == attempts:
                    log.warning(
                        "Redis at %s unreachable (%s: %s); spooling %d alert(s)",
                        self._url,
                        type(exc).__name__,
                        exc,
                        len(batch),
                    )
                    break
                tally.retries += 1
                delay = min(self.config.backoff_max_s, self.config.backoff_s * 2**attempt)
                log.warning(
                    "Redis at %s unreachable (%s); retry %d/%d in %.2f s",
                    self._url,
                    type(exc).__name__,
                    attempt + 1,
                    attempts - 1,
                    delay,
                )
                time.sleep(delay)  # backoff between retries of a real network call
                continue
            tally.published += new
            tally.duplicates += duplicates
            tally.nbytes += nbytes
            if from_spool:
                tally.replayed += len(batch)
            if self._degraded:
                self._degraded = False
                log.info("Redis at %s answers again", self._url)
                if not from_spool:
                    recovered = self.replay_spool()
                    tally.replayed += recovered.replayed
                    tally.spooled += recovered.spooled
            return
        self._degraded = True
        try:
            self.spool.write(batch)
        except SpoolError:
            log.exception("the alerts of this batch are lost: spool failed")
            raise
        tally.spooled += len(batch)
        self.spooled_ids.update(entry.alert_id for entry in batch)

    # --------------------------------------------------------------------------------- confirm
    def confirm(self, alert_ids: Iterable[int], *, chunk: int = 1000) -> list[int]:
        """
        Return the ids, among ``alert_ids``, of the alerts that are not in this night's stream.

        An alert is in the stream when the dedup hash maps its id to an entry that XRANGE finds,
        or to an entry older than the stream's first one (trimmed by ``alerts.maxlen`` after it
        was delivered). A hash field whose entry is gone otherwise (a server restarted from an
        older append-only file) is deleted, so that publishing the alert again adds it.

        Parameters
        ----------
        alert_ids : iterable of int
        chunk : int
            Ids asked per pipelined round trip.

        Returns
        -------
        list of int
            The missing ids, in the order given; empty when all are there.

        Raises
        ------
        redis.exceptions.ConnectionError, redis.exceptions.TimeoutError
            Redis does not answer: nothing could be confirmed.
        RedisAuthError
            Wrong or missing credentials.
        """
        ids = list(dict.fromkeys(alert_ids))
        if not ids:
            return []
        dedup = dedup_key(self.stream)
        try:
            first = self._first_entry(keys=[self.stream])
            first_id = _entry_order(first) if first is not None else None
            missing: list[int] = []
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                entries = self._client.hmget(dedup, [str(i) for i in part])
                looked: list[tuple[int, bytes | str]] = []
                for alert_id, entry in zip(part, entries, strict=True):
                    if entry is None:
                        missing.append(alert_id)
                    elif first_id is not None and _entry_order(entry) < first_id:
                        continue  # delivered, then trimmed by MAXLEN
                    else:
                        looked.append((alert_id, entry))
                found = self._has_entries(keys=[self.stream], args=[entry for _, entry in looked]) if looked else []
                gone = [alert_id for (alert_id, _), there in zip(looked, found, strict=True) if not int(there)]
                if gone:
                    self._client.hdel(dedup, *[str(i) for i in gone])
                    missing.extend(gone)
        except redis.exceptions.AuthenticationError:
            raise RedisAuthError(self._url, "invalid user name or password") from None
        order = {alert_id: n for n, alert_id in enumerate(ids)}
        return sorted(missing, key=order.__getitem__)

    def _send(self, batch: Sequence[EncodedAlert]) -> tuple[int, int, int]:
        sha = self._sha or self._load_script()
        results = self._pipeline(sha, batch)
        if any(isinstance(r, redis.exceptions.NoScriptError) for r in results):
            # Redis restarted and forgot the script: load it and send the batch again. Entries
            # that made it are skipped by the dedup.
            results = self._pipeline(self._load_script(), batch)
        new = duplicates = nbytes = 0
        for entry, result in zip(batch, results, strict=True):
            if isinstance(result, Exception):
                msg = f"Redis refused alert {entry.alert_id} on {entry.stream}: {result}"
                raise redis.exceptions.ResponseError(msg) from result
            if int(result[0]) == 1:
                new += 1
                nbytes += entry.nbytes
            else:
                duplicates += 1
        return new, duplicates, nbytes

    def _pipeline(self, sha: str, batch: Sequence[EncodedAlert]) -> list[Any]:
        cfg = self.config
        pipe = self._client.pipeline(transaction=False)
        script_at: list[int] = []
        n = 0
        for entry in batch:
            if entry.side_store:
                # Side-store cutouts go first, outside the script: rewriting them is harmless
                # (same key, same bytes), and kilobytes of Lua arguments cost Redis a copy each.
                key = cutout_key(entry.stream, entry.alert_id)
                pipe.hset(key, mapping=dict(entry.side_store))
                pipe.expire(key, cfg.cutout_ttl_s)
                n += 2
            args: list[bytes | str | int | float] = [entry.alert_id, cfg.maxlen, cfg.dedup_ttl_s]
            for name, value in entry.fields:
                args.extend((name, value))
            pipe.evalsha(sha, 2, entry.stream, dedup_key(entry.stream), *args)
            script_at.append(n)
            n += 1
        results = pipe.execute(raise_on_error=False)
        for result in results:
            if isinstance(result, Exception) and not isinstance(result, redis.exceptions.NoScriptError):
                msg = f"Redis refused a command of the batch: {result}"
                raise redis.exceptions.ResponseError(msg) from result
        return [results[i] for i in script_at]
