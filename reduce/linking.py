"""
Moving objects: link detections of one field across the night's exposures into tracklets under
linear motion along a great circle, fit rate and direction with their uncertainties, and predict
the position at a later time with an error ellipse.

Linking is RANSAC over pairs: every pair of detections in two exposures is a velocity hypothesis
(at most ``max_rate``); the hypothesis predicts a position in every other exposure, and the
detections there within ``n_sigma`` of the prediction (with a floor ``tolerance_arcsec``) are its
inliers. Hypotheses with at least ``min_detections`` inliers are taken greedily, most inliers and
smallest chi-square first; each is refit by weighted least squares, regrown once, and accepted
when the motion is significant and the fit's chi-square is consistent with the position errors.
A detection belongs to one tracklet at most.

Trailed detections contribute their trail: a hypothesis whose rate would trail a source by
more than ``trail_min_fwhm`` PSF widths during the exposure must consist of trailed detections
whose trails point along the motion (within ``trail_angle_tolerance_deg``) with about the
expected length; one slow enough to leave a point source must not contain long trails. Random
alignments of unrelated detections (most of the velocity space lies at high rates) rarely pass.

Positions are in a gnomonic tangent plane (astropy WCS, TAN), where great circles are straight
lines; each tracklet is refit in a plane centred on itself, so its direction is the position
angle at its own position, and predictions follow the great circle
(`~astropy.coordinates.SkyCoord.directional_offset_by`).

Notes
-----
Pure functions of their inputs (numpy, scipy, astropy), thread-safe. Experimental.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord
from astropy.wcs import WCS
from scipy.spatial import cKDTree

__all__ = ["LinkingParameters", "Prediction", "TangentPlane", "Tracklet", "fit_motion", "link_tracklets", "predict"]

_HOURS_PER_DAY = 24.0


@dataclass(frozen=True, slots=True)
class LinkingParameters:
    """
    What makes a tracklet. Stable.

    Attributes
    ----------
    min_detections : int
        Detections in distinct exposures a tracklet needs.
    max_rate : float
        Fastest motion searched, arcsec per hour.
    min_motion_arcsec : float
        Smallest displacement over the tracklet's time span (slower: a stationary source).
    min_motion_sigma : float
        The displacement must also exceed this many of its own errors.
    n_sigma, tolerance_arcsec : float
        An inlier lies within ``max(n_sigma * error, tolerance_arcsec)`` of the prediction.
    max_reduced_chi2 : float
        Accepted fits have chi-square per degree of freedom below this.
    trail_min_fwhm : float
        Motion during the exposure longer than this many FWHM leaves a trail.
    trail_angle_tolerance_deg : float
        Largest angle between a trail and the tracklet's motion.
    trail_length_tolerance : float
        Largest relative difference between a trail's length and the motion during the exposure.
    seed_epochs : int
        Hypotheses are seeded from pairs of detections whose exposures are at most this many
        apart in time order (each is then extended over every exposure). A mover is found if two
        of its detections are that close: the cost grows as exposures x seed_epochs x exposures
        rather than as exposures cubed, which matters for fields observed dozens of times a night.
    """

    min_detections: int = 3
    max_rate: float = 4000.0
    min_motion_arcsec: float = 1.5
    min_motion_sigma: float = 5.0
    n_sigma: float = 5.0
    tolerance_arcsec: float = 0.3
    max_reduced_chi2: float = 10.0
    trail_min_fwhm: float = 1.5
    trail_angle_tolerance_deg: float = 20.0
    trail_length_tolerance: float = 0.5
    seed_epochs: int = 3


class TangentPlane:
    """
    Gnomonic projection about a centre, in arcsec: ``xi`` east, ``eta`` north. Stable.

    Parameters
    ----------
    ra, dec : float
        Centre in degrees.
    """

    def __init__(self, ra: float, dec: float) -> None:
        wcs = WCS(naxis=2)
        wcs.wcs.ctype = ["RA---TAN", "DEC--TAN"]
        wcs.wcs.crval = [ra, dec]
        wcs.wcs.crpix = [1.0, 1.0]  # FITS pixels are 1-based: the centre is 0-based (0, 0)
        wcs.wcs.cdelt = [1.0 / 3600.0, 1.0 / 3600.0]
        self._wcs = wcs
        self.ra, self.dec = ra, dec

    def to_plane(self, ra: np.ndarray, dec: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (xi, eta) in arcsec of sky positions in degrees."""
        xi, eta = self._wcs.wcs_world2pix(np.atleast_1d(ra), np.atleast_1d(dec), 0)
        return np.asarray(xi, float), np.asarray(eta, float)

    def to_sky(self, xi: np.ndarray, eta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Return (ra, dec) in degrees of plane positions in arcsec."""
        ra, dec = self._wcs.wcs_pix2world(np.atleast_1d(xi), np.atleast_1d(eta), 0)
        return np.asarray(ra, float) % 360.0, np.asarray(dec, float)


@dataclass(frozen=True, slots=True)
class Prediction:
    """
    A predicted position with its 1-sigma error ellipse. Stable.

    Attributes
    ----------
    mjd, ra, dec : float
        Time (the tracklet's time scale) and position (degrees).
    err_major, err_minor : float
        Semi-axes of the 1-sigma ellipse, arcsec (it holds the truth 39 % of the time; scale by
        1.515 for 68 %, by 2.448 for 95 %).
    err_pa : float
        Position angle of the major axis, degrees east of north, in [0, 180).
    covariance : (2, 2) ndarray
        Of (east, north) offsets in arcsec^2.
    """

    mjd: float
    ra: float
    dec: float
    err_major: float
    err_minor: float
    err_pa: float
    covariance: np.ndarray


@dataclass(frozen=True, slots=True)
class Tracklet:
    """
    Linked detections of one moving object and its fitted motion. Stable.

    Attributes
    ----------
    members : ndarray of int
        Indices of the detections (into the arrays given to `link_tracklets`), in time order.
    ref_mjd, ra, dec : float
        Reference time (the members' mean) and the fitted position then (degrees).
    rate, rate_err : float
        Arcsec per hour.
    position_angle, position_angle_err : float
        Direction of motion, degrees east of north (at the fitted position).
    chi2 : float
        Of the fit; ``2 (n - 2)`` degrees of freedom.
    covariance : (4, 4) ndarray
        Of (xi0, eta0, v_xi, v_eta) in the tracklet's own tangent plane (arcsec, arcsec/hour).
    """

    members: np.ndarray
    ref_mjd: float
    ra: float
    dec: float
    rate: float
    rate_err: float
    position_angle: float
    position_angle_err: float
    chi2: float
    covariance: np.ndarray

    @property
    def n_detections(self) -> int:
        """Number of linked detections."""
        return len(self.members)


def fit_motion(mjd: np.ndarray, ra: np.ndarray, dec: np.ndarray, sigma: np.ndarray) -> Tracklet:
    """
    Fit linear great-circle motion to detections by weighted least squares.

    Parameters
    ----------
    mjd : ndarray
        Times (days).
    ra, dec : ndarray
        Positions (degrees).
    sigma : ndarray
        1-sigma position errors per coordinate (arcsec).

    Returns
    -------
    Tracklet
        With ``members`` = ``arange(n)``.

    Raises
    ------
    ValueError
        Fewer than two detections, or all at one time.
    """
    mjd, ra, dec, sigma = (np.asarray(a, float) for a in (mjd, ra, dec, sigma))
    if len(mjd) < 2 or np.ptp(mjd) <= 0:
        msg = f"fit_motion needs detections at two or more times, got {len(mjd)} at {np.unique(mjd).size} times"
        raise ValueError(msg)
    centre = SkyCoord(ra * u.deg, dec * u.deg).cartesian.mean()
    sph = SkyCoord(centre, representation_type="cartesian").spherical
    plane = TangentPlane(float(sph.lon.deg), float(sph.lat.deg))
    xi, eta = plane.to_plane(ra, dec)
    w = 1.0 / np.maximum(sigma, 1e-6) ** 2
    t_ref = float(np.sum(w * mjd) / np.sum(w))
    dt = (mjd - t_ref) * _HOURS_PER_DAY
    design = np.column_stack([np.ones_like(dt), dt])
    normal = design.T @ (design * w[:, None])
    cov2 = np.linalg.inv(normal)
    px = cov2 @ (design.T @ (w * xi))
    py = cov2 @ (design.T @ (w * eta))
    chi2 = float(np.sum(w * ((xi - design @ px) ** 2 + (eta - design @ py) ** 2)))
    cov = np.zeros((4, 4))
    cov[np.ix_([0, 2], [0, 2])] = cov2
    cov[np.ix_([1, 3], [1, 3])] = cov2
    vx, vy = float(px[1]), float(py[1])
    rate = math.hypot(vx, vy)
    jac_rate = np.array([0.0, 0.0, vx / rate, vy / rate]) if rate > 0 else np.zeros(4)
    jac_pa = np.array([0.0, 0.0, vy / rate**2, -vx / rate**2]) if rate > 0 else np.zeros(4)
    rate_err = float(math.sqrt(jac_rate @ cov @ jac_rate)) if rate > 0 else float(math.sqrt(cov[2, 2]))
    pa_err = float(math.degrees(math.sqrt(jac_pa @ cov @ jac_pa))) if rate > 0 else 180.0
    ra0, dec0 = plane.to_sky(np.array([px[0]]), np.array([py[0]]))
    # Re-express in a plane centred on the fitted position, where the PA is the local one.
    local = TangentPlane(float(ra0[0]), float(dec0[0]))
    ahead_x, ahead_y = local.to_plane(*plane.to_sky(np.array([px[0] + vx]), np.array([py[0] + vy])))
    pa = math.degrees(math.atan2(float(ahead_x[0]), float(ahead_y[0]))) % 360.0
    return Tracklet(np.arange(len(mjd)), t_ref, float(ra0[0]), float(dec0[0]), rate, rate_err, pa, min(pa_err, 180.0),
                    chi2, cov)


def predict(tracklet: Tracklet, mjd: float) -> Prediction:
    """
    Predict a tracklet's position at a time, with its error ellipse.

    Parameters
    ----------
    tracklet : Tracklet
    mjd : float
        Time in the tracklet's time scale (days).

    Returns
    -------
    Prediction
        Along the great circle through the fitted position at the fitted position angle, at the
        fitted rate; the covariance propagates the fit's (position, velocity) covariance.
    """
    dt = (mjd - tracklet.ref_mjd) * _HOURS_PER_DAY
    here = SkyCoord(tracklet.ra * u.deg, tracklet.dec * u.deg)
    there = here.directional_offset_by(tracklet.position_angle * u.deg, tracklet.rate * dt * u.arcsec)
    jac = np.array([[1.0, 0.0, dt, 0.0], [0.0, 1.0, 0.0, dt]])
    cov = jac @ tracklet.covariance @ jac.T
    evals, evecs = np.linalg.eigh(cov)
    major = evecs[:, 1]
    err_pa = math.degrees(math.atan2(major[0], major[1])) % 180.0
    return Prediction(float(mjd), float(there.ra.deg), float(there.dec.deg), float(math.sqrt(max(evals[1], 0.0))),
                      float(math.sqrt(max(evals[0], 0.0))), err_pa, cov)


def link_tracklets(
    mjd: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    sigma: np.ndarray,
    epoch: np.ndarray,
    *,
    trail_length_arcsec: np.ndarray | None = None,
    trail_pa_deg: np.ndarray | None = None,
    exptime_s: np.ndarray | None = None,
    fwhm_arcsec: np.ndarray | None = None,
    params: LinkingParameters | None = None,
) -> list[Tracklet]:
    """
    Link detections of one field into tracklets of linear great-circle motion.

    Parameters
    ----------
    mjd, ra, dec, sigma : ndarray
        Time (days), position (degrees) and 1-sigma position error per coordinate (arcsec).
    epoch : ndarray of int
        The exposure of each detection; a tracklet takes at most one detection of each.
    trail_length_arcsec, trail_pa_deg : ndarray, optional
        Measured trail of each detection (length 0 and PA NaN when not trailed; PA east of north,
        modulo 180). Without them, trails are not used.
    exptime_s, fwhm_arcsec : ndarray, optional
        Exposure time and PSF FWHM of each detection (needed to use trails).
    params : LinkingParameters, optional

    Returns
    -------
    list of Tracklet
        Sorted by their first member; empty when nothing links.
    """
    p = params or LinkingParameters()
    mjd, ra, dec, sigma = (np.asarray(a, float) for a in (mjd, ra, dec, sigma))
    epoch = np.asarray(epoch)
    n = len(mjd)
    if n < p.min_detections:
        return []
    use_trails = trail_length_arcsec is not None and trail_pa_deg is not None and exptime_s is not None and fwhm_arcsec is not None
    trails = _Trails(np.asarray(trail_length_arcsec, float), np.asarray(trail_pa_deg, float), np.asarray(exptime_s, float),
                     np.asarray(fwhm_arcsec, float), p) if use_trails else None
    centre = SkyCoord(ra * u.deg, dec * u.deg).cartesian.mean()
    sph = SkyCoord(centre, representation_type="cartesian").spherical
    plane = TangentPlane(float(sph.lon.deg), float(sph.lat.deg))
    xi, eta = plane.to_plane(ra, dec)
    epochs = sorted(set(epoch.tolist()), key=lambda e: float(np.median(mjd[epoch == e])))
    if len(epochs) < p.min_detections:
        return []
    index = {e: np.flatnonzero(epoch == e) for e in epochs}
    t_of = {e: float(np.median(mjd[index[e]])) for e in epochs}
    trees = {e: cKDTree(np.column_stack([xi[index[e]], eta[index[e]]])) for e in epochs}
    hypotheses = _hypotheses(xi, eta, sigma, mjd, epochs, index, t_of, trees, trails, p)
    used = np.zeros(n, bool)
    tracklets: list[Tracklet] = []
    for members in hypotheses:
        if used[members].any():
            continue
        accepted = _grow_and_accept(members, xi, eta, mjd, ra, dec, sigma, epochs, index, trees, used, trails, p)
        if accepted is not None:
            used[accepted.members] = True
            tracklets.append(accepted)
    return sorted(tracklets, key=lambda tr: int(tr.members[0]))


class _Trails:
    """Trail consistency of a velocity with detections."""

    def __init__(self, length: np.ndarray, pa: np.ndarray, exptime: np.ndarray, fwhm: np.ndarray, p: LinkingParameters) -> None:
        self.length = np.nan_to_num(length, nan=0.0)
        self.pa = pa
        self.exptime = exptime
        self.fwhm = fwhm
        self.p = p

    def consistent(self, members: np.ndarray, vx: np.ndarray, vy: np.ndarray) -> np.ndarray:
        """For each hypothesis (row of ``members``, velocity in arcsec/hour), whether every member's trail fits."""
        rate = np.hypot(vx, vy)
        pa = np.degrees(np.arctan2(vx, vy)) % 180.0
        contradicted = np.zeros(len(vx), bool)
        missing = np.zeros(len(vx), int)
        for k in range(members.shape[1]):
            m = members[:, k]
            expected = rate * self.exptime[m] / 3600.0
            long_limit = 2.0 * self.p.trail_min_fwhm * self.fwhm[m]
            length = self.length[m]
            dpa = np.abs((pa - np.nan_to_num(self.pa[m]) + 90.0) % 180.0 - 90.0)
            agrees = (dpa <= self.p.trail_angle_tolerance_deg) & \
                (np.abs(length - expected) <= self.p.trail_length_tolerance * expected + self.fwhm[m])
            long = (expected > long_limit) | (length > long_limit)
            # A seen trail that is long, or seen where a long one is expected, must lie along the
            # motion with about the expected length; a long expected trail may go unseen (faint
            # ends below the threshold) in all but two detections.
            contradicted |= (length > 0) & long & ~agrees
            missing += (expected > long_limit) & (length == 0)
        ok = ~contradicted & (missing <= members.shape[1] - 2)
        return ok


def _hypotheses(xi: np.ndarray, eta: np.ndarray, sigma: np.ndarray, mjd: np.ndarray, epochs: list, index: dict,
                t_of: dict, trees: dict, trails: _Trails | None, p: LinkingParameters) -> list[np.ndarray]:
    """Every seed pair's inliers (pairs of exposures at most ``p.seed_epochs`` apart), best first (most inliers, then smallest chi-square)."""
    found: dict[tuple[int, ...], float] = {}
    seeds = ((ea, eb) for a, ea in enumerate(epochs) for eb in epochs[a + 1 : a + 1 + p.seed_epochs])
    for ea, eb in seeds:
        ia, ib = index[ea], index[eb]
        dt = (t_of[eb] - t_of[ea]) * _HOURS_PER_DAY
        if dt <= 0:
            continue
        pairs = trees[ea].query_ball_tree(trees[eb], p.max_rate * dt)
        left = np.array([ia[k] for k, js in enumerate(pairs) for _ in js], dtype=int)
        right = np.array([ib[j] for js in pairs for j in js], dtype=int)
        if not len(left):
            continue
        dta = (mjd[right] - mjd[left]) * _HOURS_PER_DAY
        vx, vy = (xi[right] - xi[left]) / dta, (eta[right] - eta[left]) / dta
        keep = np.hypot(vx, vy) <= p.max_rate
        if trails is not None:
            keep &= trails.consistent(np.column_stack([left, right]), vx, vy)
        left, right, vx, vy = left[keep], right[keep], vx[keep], vy[keep]
        members = [left, right]
        chi2 = np.zeros(len(left))
        for ec in epochs:
            if ec in (ea, eb) or not len(left):
                continue
            tc = t_of[ec]
            f = (tc - mjd[left]) / (mjd[right] - mjd[left])
            px = xi[left] + vx * (tc - mjd[left]) * _HOURS_PER_DAY
            py = eta[left] + vy * (tc - mjd[left]) * _HOURS_PER_DAY
            pred_sigma = np.hypot(sigma[left] * (1 - f), sigma[right] * f)
            dist, j = trees[ec].query(np.column_stack([px, py]), k=1)
            hit = np.isfinite(dist)
            jj = np.where(hit, j, 0)
            cand = index[ec][np.minimum(jj, len(index[ec]) - 1)]
            err = np.hypot(pred_sigma, sigma[cand])
            hit &= dist <= np.maximum(p.n_sigma * err, p.tolerance_arcsec)
            members.append(np.where(hit, cand, -1))
            chi2 += np.where(hit, (dist / err) ** 2, 0.0)
        stacked = np.column_stack(members)
        counts = (stacked >= 0).sum(axis=1)
        for row in np.flatnonzero(counts >= p.min_detections):
            key = tuple(sorted(int(m) for m in stacked[row] if m >= 0))
            found[key] = min(found.get(key, np.inf), float(chi2[row]))
    return [np.array(k, dtype=int) for k, _ in sorted(found.items(), key=lambda kv: (-len(kv[0]), kv[1], kv[0]))]


def _grow_and_accept(members: np.ndarray, xi: np.ndarray, eta: np.ndarray, mjd: np.ndarray, ra: np.ndarray,
                     dec: np.ndarray, sigma: np.ndarray, epochs: list, index: dict, trees: dict, used: np.ndarray,
                     trails: _Trails | None, p: LinkingParameters) -> Tracklet | None:
    """Refit, regrow once from all unused detections, and accept or reject."""
    for _ in range(2):
        fit = _plane_fit(members, xi, eta, mjd, sigma)
        if fit is None:
            return None
        x0, y0, vx, vy, t_ref, cov = fit
        grown = []
        for e in epochs:
            t = float(np.median(mjd[index[e]]))
            dt = (t - t_ref) * _HOURS_PER_DAY
            px, py = x0 + vx * dt, y0 + vy * dt
            pred_var = cov[0, 0] + dt * dt * cov[2, 2] + 2 * dt * cov[0, 2]
            candidates = [index[e][j] for j in trees[e].query_ball_point([px, py], r=max(p.n_sigma * 3 * math.sqrt(pred_var + sigma.max() ** 2), p.tolerance_arcsec))]
            best, best_d = -1, np.inf
            for c in candidates:
                if used[c] and c not in members:
                    continue
                d = math.hypot(xi[c] - px, eta[c] - py)
                tol = max(p.n_sigma * math.sqrt(sigma[c] ** 2 + pred_var), p.tolerance_arcsec)
                if d <= tol and d < best_d:
                    best, best_d = c, d
            if best >= 0:
                grown.append(best)
        grown_arr = np.array(sorted(grown, key=lambda c: mjd[c]), dtype=int)
        if len(grown_arr) < p.min_detections:
            return None
        if np.array_equal(grown_arr, members):
            break
        members = grown_arr
    fit = _plane_fit(members, xi, eta, mjd, sigma)
    if fit is None:
        return None
    x0, y0, vx, vy, t_ref, cov = fit
    dof = 2 * (len(members) - 2)
    resid = np.hypot(xi[members] - (x0 + vx * (mjd[members] - t_ref) * _HOURS_PER_DAY),
                     eta[members] - (y0 + vy * (mjd[members] - t_ref) * _HOURS_PER_DAY))
    floor = p.tolerance_arcsec / p.n_sigma
    chi2 = float(np.sum((resid / np.maximum(sigma[members], floor)) ** 2))
    if dof > 0 and chi2 / dof > p.max_reduced_chi2:
        return None
    span = float(np.ptp(mjd[members])) * _HOURS_PER_DAY
    rate = math.hypot(vx, vy)
    rate_sigma = math.sqrt(max(cov[2, 2], 1e-12))
    if rate * span < p.min_motion_arcsec or rate < p.min_motion_sigma * rate_sigma:
        return None
    if trails is not None and not trails.consistent(members[None, :], np.array([vx]), np.array([vy]))[0]:
        return None
    tracklet = fit_motion(mjd[members], ra[members], dec[members], sigma[members])
    return Tracklet(members, tracklet.ref_mjd, tracklet.ra, tracklet.dec, tracklet.rate, tracklet.rate_err,
                    tracklet.position_angle, tracklet.position_angle_err, tracklet.chi2, tracklet.covariance)


def _plane_fit(members: np.ndarray, xi: np.ndarray, eta: np.ndarray, mjd: np.ndarray,
               sigma: np.ndarray) -> tuple[float, float, float, float, float, np.ndarray] | None:
    t = mjd[members]
    if len(members) < 2 or np.ptp(t) <= 0:
        return None
    w = 1.0 / np.maximum(sigma[members], 1e-6) ** 2
    t_ref = float(np.sum(w * t) / np.sum(w))
    dt = (t - t_ref) * _HOURS_PER_DAY
    design = np.column_stack([np.ones_like(dt), dt])
    cov2 = np.linalg.inv(design.T @ (design * w[:, None]))
    px = cov2 @ (design.T @ (w * xi[members]))
    py = cov2 @ (design.T @ (w * eta[members]))
    cov = np.zeros((4, 4))
    cov[np.ix_([0, 2], [0, 2])] = cov2
    cov[np.ix_([1, 3], [1, 3])] = cov2
    return float(px[0]), float(py[0]), float(px[1]), float(py[1]), t_ref, cov
