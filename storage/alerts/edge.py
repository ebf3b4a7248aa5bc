"""
Edge pre-filtering: a worker at a remote site publishes only confident candidates.

Instead of shipping its tiles to the central cluster, a remote site runs detection locally and
publishes to the central Redis only the alerts whose real/bogus score reaches
``alerts.edge_min_score``; `AlertProducer` applies the `EdgeFilter` of its configuration.
`estimate_night_traffic` compares the bytes a night sends both ways.

Notes
-----
Thread-safe: pure functions and immutable records.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .packet import Alert

__all__ = ["EdgeFilter", "NightTraffic", "estimate_night_traffic"]


@dataclass(frozen=True, slots=True)
class EdgeFilter:
    """
    Keep alerts whose real/bogus score is at least ``min_score``. Stable.

    Attributes
    ----------
    min_score : float or None
        In [0, 1]; None keeps every alert.
    """

    min_score: float | None = None

    def __post_init__(self) -> None:
        if self.min_score is not None and not 0.0 <= self.min_score <= 1.0:
            msg = f"min_score must be in [0, 1] or None, got {self.min_score!r}"
            raise ValueError(msg)

    def keep(self, alert: Alert) -> bool:
        """Return whether the alert goes to the central stream."""
        return self.min_score is None or alert.detection.real_bogus >= self.min_score

    def select(self, alerts: Iterable[Alert]) -> list[Alert]:
        """Return the alerts that pass, in order (an empty list when none does)."""
        return [alert for alert in alerts if self.keep(alert)]


@dataclass(frozen=True, slots=True)
class NightTraffic:
    """
    Bytes one site sends to the centre in one night, both ways. Stable.

    Attributes
    ----------
    tile_bytes : int
        Shipping every science tile (compressed as stored).
    alert_bytes_all : int
        Publishing a packet for every candidate.
    alert_bytes_filtered : int
        Publishing packets only for candidates at or above the threshold.
    candidates, alerts_sent : int
    """

    tile_bytes: int
    alert_bytes_all: int
    alert_bytes_filtered: int
    candidates: int
    alerts_sent: int

    @property
    def reduction(self) -> float:
        """How many times fewer bytes the filtered alerts take than the tiles."""
        return self.tile_bytes / max(self.alert_bytes_filtered, 1)


def estimate_night_traffic(
    *,
    exposures: int,
    ccds_per_exposure: int,
    tiles_per_ccd: int,
    tile_bytes: float,
    candidates_per_ccd: float,
    packet_bytes: Sequence[int],
    scores: Sequence[float],
    min_score: float,
) -> NightTraffic:
    """
    Estimate a night's bytes from measured tile and packet sizes and a score distribution.

    Parameters
    ----------
    exposures, ccds_per_exposure, tiles_per_ccd : int
        The night's geometry.
    tile_bytes : float
        Mean stored (compressed) bytes of one science tile.
    candidates_per_ccd : float
        Mean detections per CCD on the difference image (real and bogus).
    packet_bytes : sequence of int
        Encoded sizes of sample packets (with cutouts); their mean is used.
    scores : sequence of float
        Real/bogus scores of sample candidates; the fraction at or above ``min_score`` is used.
    min_score : float
        The edge threshold.

    Returns
    -------
    NightTraffic

    Raises
    ------
    ValueError
        packet_bytes or scores is empty.
    """
    if not packet_bytes or not scores:
        msg = f"packet_bytes and scores must be non-empty, got {len(packet_bytes)} and {len(scores)} values"
        raise ValueError(msg)
    ccds = exposures * ccds_per_exposure
    candidates = round(ccds * candidates_per_ccd)
    mean_packet = sum(packet_bytes) / len(packet_bytes)
    passing = sum(1 for s in scores if s >= min_score) / len(scores)
    sent = round(candidates * passing)
    return NightTraffic(
        tile_bytes=round(ccds * tiles_per_ccd * tile_bytes),
        alert_bytes_all=round(candidates * mean_packet),
        alert_bytes_filtered=round(sent * mean_packet),
        candidates=candidates,
        alerts_sent=sent,
    )
