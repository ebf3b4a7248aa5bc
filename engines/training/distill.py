"""
Distillation of a survey's own real/bogus score into the classifier, on augmented real cutouts.

The real alerts in ``../shared/data`` are few (354), but a survey's scorer can label as many
views of them as we like: ZTF's braai (`skyblink.evaluation.braai_port`, the network whose output
*is* ``drb``) scores each training alert's raw cutouts turned, flipped and shifted
(`VARIANTS`, 8 dihedral turns x 4 shifts), so the student learns braai's answer on every view
rather than one number per alert. Rubin's ``reliability`` (and ZTF packets without raw
cutouts) give one soft target for all of an alert's views. Beside them: the injected point
sources and real-image residuals of `skyblink.engines.training.real_sky` (hard labels) and
simulated stamps with truth (real/bogus and class losses, so the pipeline's own stamps stay
scored as before), each in the 8 dihedral turns.

`DistillData` holds all of it in one ``.npz`` (stamps as uint8 in the network's own asinh
space, `quantize_stamps`), made where the survey readers run (astropy, fastavro) and trained
where a GPU is (`train_distilled` needs only numpy and torch). Within a fold every real sample
comes from the training folds' alerts only (``owner``).

Notes
-----
numpy + torch only (no survey readers), so it runs on a bare GPU machine. Seeded.
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.nn import functional as F

from ..networks import Classifier

__all__ = ["VARIANTS", "DistillData", "DistillRecipe", "augment", "dequantize_stamps", "quantize_stamps",
           "train_distilled"]

#: The views of a stamp the teacher scores: (quarter turns, flip left-right, roll rows, roll columns).
VARIANTS: tuple[tuple[int, bool, int, int], ...] = tuple(
    (k, flip, dy, dx) for dy, dx in ((0, 0), (2, -1), (-1, 3), (-3, -2)) for flip in (False, True) for k in range(4))
#: asinh-space range of `quantize_stamps` (sigma units -8000 .. +1.6e6 are kept, beyond is clipped).
_Q_LO, _Q_HI = -9.7, 14.97


def quantize_stamps(stamps: np.ndarray) -> np.ndarray:
    """
    Return sigma-unit stamps as uint8 codes of their asinh (the classifier's first operation).

    Parameters
    ----------
    stamps : array of float
        Any shape, sigma units.

    Returns
    -------
    uint8 array of the same shape; `dequantize_stamps` inverts it to within 0.05 in asinh
    (0.07 sigma within 1 sigma of the sky, 5 % of a bright pixel).
    """
    a = np.arcsinh(np.asarray(stamps, dtype=np.float32))
    return np.clip(np.rint((a - _Q_LO) / (_Q_HI - _Q_LO) * 255.0), 0, 255).astype(np.uint8)


def dequantize_stamps(codes: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Return float32 sigma-unit stamps (a torch tensor, on the codes' device) from `quantize_stamps` codes."""
    q = torch.as_tensor(codes)
    return torch.sinh(q.float() * ((_Q_HI - _Q_LO) / 255.0) + _Q_LO)


def augment(x: np.ndarray | torch.Tensor, variant: tuple[int, bool, int, int]) -> Any:
    """
    Return one view of stamps: ``variant`` = (quarter turns, flip, roll rows, roll columns) of `VARIANTS`.

    Works on numpy arrays and torch tensors of shape (..., ny, nx); the roll wraps around.
    """
    k, flip, dy, dx = variant
    if isinstance(x, torch.Tensor):
        out = torch.rot90(x, k, dims=(-2, -1))
        out = out.flip(-1) if flip else out
        return torch.roll(out, (dy, dx), dims=(-2, -1)) if dy or dx else out
    view = np.rot90(x, k, axes=(-2, -1))
    view = view[..., ::-1] if flip else view
    return np.ascontiguousarray(np.roll(view, (dy, dx), axis=(-2, -1)) if dy or dx else view)


@dataclass
class DistillData:
    """
    Everything a distillation run trains on, per alert and per sample. Experimental.

    Attributes
    ----------
    alerts : (N, 3, 63, 63) uint8
        Each alert's classifier stamps (`quantize_stamps` of `skyblink.engines.stamps.external_stamps`).
    teacher : (N, len(VARIANTS)) float32
        Soft real/bogus target of each alert's view: braai on that view of the raw cutouts (ZTF),
        else the packet's own score for every view; NaN where the alert has none.
    packet : (N,) float32
        The packet's own score (drb, else rb; Rubin reliability), NaN where none.
    survey : (N,) int
        0 ZTF, 1 Rubin.
    fakes, fake_label, fake_owner : (M, 3, 63, 63) uint8, (M,) float32, (M,) int
        Injections (label 1) and real-image residuals (label 0), each made from one alert's cutouts.
    sim, sim_rb, sim_cls : (S, 3, 63, 63) uint8, (S,) float32, (S,) int
        Simulated stamps with truth.
    """

    alerts: np.ndarray
    teacher: np.ndarray
    packet: np.ndarray
    survey: np.ndarray
    fakes: np.ndarray
    fake_label: np.ndarray
    fake_owner: np.ndarray
    sim: np.ndarray
    sim_rb: np.ndarray
    sim_cls: np.ndarray

    def save(self, path: str | Path, **extra: np.ndarray) -> Path:
        """Write to a compressed ``.npz`` (with ``extra`` arrays beside, e.g. the folds); return the path."""
        arrays: dict[str, Any] = {f.name: getattr(self, f.name) for f in fields(self)} | extra
        np.savez_compressed(path, **arrays)
        return Path(path)

    @classmethod
    def load(cls, path: str | Path) -> DistillData:
        """
        Read a `save`d file.

        Raises
        ------
        KeyError
            The file lacks one of the arrays (named in the message).
        """
        with np.load(path, allow_pickle=False) as npz:
            missing = [f.name for f in fields(cls) if f.name not in npz.files]
            if missing:
                msg = f"{path}: not a DistillData file, missing {missing}"
                raise KeyError(msg)
            return cls(**{f.name: npz[f.name] for f in fields(cls)})


@dataclass(frozen=True, slots=True)
class DistillRecipe:
    """
    One distillation training (all layers, AdamW, one-cycle). Experimental.

    Attributes
    ----------
    teacher : {"braai", "braai_mean", "packet"}
        ``braai``: the per-view `DistillData.teacher`; ``braai_mean``: its mean over the views, for
        every view (a target that does not turn with the stamp); ``packet``: the packet's own score.
    fakes, sim : bool
        Use the injections/residuals, the simulated stamps.
    alert_share, fake_share : float
        Fractions of each batch drawn from the alerts' views and from the fakes (the rest simulated).
    steps, batch_size, learning_rate, weight_decay : training
    noise : float
        Largest sigma of Gaussian noise added to a view (uniform in 0..noise per sample).
    seed : int
    """

    teacher: str = "braai"
    fakes: bool = True
    sim: bool = True
    alert_share: float = 0.5
    fake_share: float = 0.2
    steps: int = 1500
    batch_size: int = 256
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    noise: float = 0.3
    seed: int = 7

    def as_dict(self) -> dict[str, Any]:
        """The recipe as plain data (for a model card)."""
        return asdict(self)


def _views(codes: np.ndarray, variants: tuple[tuple[int, bool, int, int], ...], device: torch.device) -> torch.Tensor:
    """(len(variants), N, 3, 63, 63) float32 views of uint8 stamps, on ``device``."""
    x = dequantize_stamps(torch.from_numpy(codes).to(device))
    return torch.stack([augment(x, v) for v in variants])


def train_distilled(data: DistillData, train_alerts: np.ndarray, recipe: DistillRecipe = DistillRecipe(), *,
                    base: Classifier, device: str | torch.device = "cpu") -> Classifier:
    """
    Train every layer of a copy of ``base`` on a fold's share of ``data``.

    Parameters
    ----------
    data : DistillData
    train_alerts : (N,) bool
        The alerts in the training folds; their views, and the fakes they own, are used.
    recipe : DistillRecipe
    base : Classifier
        Start from these weights (not changed).
    device : str or torch.device

    Returns
    -------
    Classifier
        The trained copy, eval mode, on the CPU.

    Raises
    ------
    ValueError
        No training sample is left (no training alert with a target, no fake, no simulated stamp).
    """
    device = torch.device(device)
    gen = torch.Generator(device="cpu").manual_seed(recipe.seed)
    torch.manual_seed(recipe.seed)
    model = copy.deepcopy(base).to(device).train()
    if recipe.teacher not in ("braai", "braai_mean", "packet"):
        msg = f"DistillRecipe.teacher must be 'braai', 'braai_mean' or 'packet', got {recipe.teacher!r}"
        raise ValueError(msg)
    per_alert = data.packet if recipe.teacher == "packet" else data.teacher.mean(axis=1)
    target = data.teacher if recipe.teacher == "braai" else np.repeat(per_alert[:, None], len(VARIANTS), axis=1)
    keep = np.asarray(train_alerts, bool) & np.isfinite(target).all(axis=1)
    a_views = _views(data.alerts[keep], VARIANTS, device)  # (V, Na, ...)
    a_target = torch.from_numpy(np.ascontiguousarray(target[keep].T)).float().to(device)  # (V, Na)
    dihedral = VARIANTS[:8]
    f_keep = np.asarray(train_alerts, bool)[data.fake_owner] if recipe.fakes else np.zeros(len(data.fake_owner), bool)
    f_views = _views(data.fakes[f_keep], dihedral, device)
    f_label = torch.from_numpy(data.fake_label[f_keep]).float().to(device)
    s_views = _views(data.sim, dihedral, device) if recipe.sim else _views(data.sim[:0], dihedral, device)
    s_rb = torch.from_numpy(data.sim_rb).float().to(device)
    s_cls = torch.from_numpy(data.sim_cls).long().to(device)
    na, nf, ns = a_views.shape[1], f_views.shape[1], s_views.shape[1]
    shares = np.array([recipe.alert_share * (na > 0), recipe.fake_share * (nf > 0),
                       (1 - recipe.alert_share - recipe.fake_share) * (ns > 0)], float)
    if shares.sum() <= 0:
        msg = "train_distilled: no training sample (no alert with a target, no fake, no simulated stamp)"
        raise ValueError(msg)
    counts = np.floor(shares / shares.sum() * recipe.batch_size).astype(int)
    counts[int(np.argmax(shares))] += recipe.batch_size - counts.sum()
    opt = torch.optim.AdamW(model.parameters(), lr=recipe.learning_rate, weight_decay=recipe.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.learning_rate, total_steps=recipe.steps)
    for _ in range(recipe.steps):
        xs, ys, parts = [], [], []
        if counts[0]:
            v = torch.randint(0, len(VARIANTS), (counts[0],), generator=gen).to(device)
            i = torch.randint(0, na, (counts[0],), generator=gen).to(device)
            xs.append(a_views[v, i])
            ys.append(a_target[v, i])
        if counts[1]:
            v = torch.randint(0, 8, (counts[1],), generator=gen).to(device)
            i = torch.randint(0, nf, (counts[1],), generator=gen).to(device)
            xs.append(f_views[v, i])
            ys.append(f_label[i])
        if counts[2]:
            v = torch.randint(0, 8, (counts[2],), generator=gen).to(device)
            i = torch.randint(0, ns, (counts[2],), generator=gen).to(device)
            xs.append(s_views[v, i])
            ys.append(s_rb[i])
            parts.append(s_cls[i])
        x = torch.cat(xs)
        if recipe.noise > 0:
            x = x + torch.rand(len(x), 1, 1, 1, device=device) * recipe.noise * torch.randn_like(x)
        rb_logit, class_logits = model.logits(x)
        loss = F.binary_cross_entropy_with_logits(rb_logit[:, 0], torch.cat(ys))
        if parts:
            n_sim = int(counts[2])
            loss = loss + F.cross_entropy(class_logits[-n_sim:], parts[0]) * (n_sim / len(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.cpu().eval()
