"""
ZTF's braai real/bogus network (model d6_m7) in torch: weight conversion, pre-processing, loading.

braai (Duev et al. 2019, MNRAS 489, 3582; https://github.com/dmitryduev/braai, MIT licence) is
the VGG6 whose output ZTF writes into every alert as ``candidate.drb`` when
``candidate.drbversion == "d6_m7"``. The network is `skyblink.engines.networks.Braai`; this module

* converts the upstream Keras HDF5 weights to its ``state_dict`` (`convert_keras_weights`);
* reproduces the exact pre-processing ZTF used for d6_m7 (`braai_normalize`,
  `braai_normalize_batch`);
* loads the converted weights shipped as package data, ``engines/models/braai/d6_m7.npz``
  (`load_braai`).

The shipped ``.npz`` is regenerated from the upstream file with::

    python -m skyblink.evaluation.braai_port /path/to/d6_m7.weights.h5

Notes
-----
CPU only here; the returned module can be moved to a GPU by the caller. h5py is needed only for
the conversion and is imported inside `convert_keras_weights` (``pip install h5py``, in the
``dev`` extra). Loading the shipped weights needs numpy and torch only (no pickle).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import zipfile
from collections.abc import Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from skyblink.engines.networks import Braai
from skyblink.engines.trust import IntegrityError
from skyblink.lazy_import import lazy_module
from skyblink.model_io import STAMP_SIZE

if TYPE_CHECKING:
    import h5py
else:
    h5py = lazy_module("h5py")  # conversion-time dependency only (the dev extra)

__all__ = [
    "BRAAI_MODEL",
    "BRAAI_PAD_VALUE",
    "braai_normalize",
    "braai_normalize_batch",
    "convert_keras_weights",
    "load_braai",
    "main",
    "save_weights_npz",
    "shipped_weights_path",
]

#: The braai model ZTF ran for ``drb`` (``candidate.drbversion``) and whose weights are shipped.
BRAAI_MODEL = "d6_m7"
#: Constant used to pad cutouts smaller than 63x63 (after normalising), as braai does.
BRAAI_PAD_VALUE = 1e-9

# Keras layer name -> torch module name of `Braai` (identical by construction) and its kind.
_LAYERS = {"conv1": "conv", "conv2": "conv", "conv3": "conv", "conv4": "conv", "fc_1": "dense", "fc_out": "dense"}
_PACKAGE = "skyblink.engines"
_NPZ_PARTS = ("models", "braai", f"{BRAAI_MODEL}.npz")


def _find_dataset(group: object, name: str) -> object:
    """Return the dataset ``name`` (``kernel:0`` / ``bias:0``) below a Keras layer group."""
    found: list[object] = []

    def visit(path: str, obj: object) -> None:
        if path.rsplit("/", 1)[-1] == name and hasattr(obj, "shape"):
            found.append(obj)

    group.visititems(visit)  # type: ignore[attr-defined]
    if len(found) != 1:
        msg = f"expected exactly one {name!r} dataset under {group.name!r}, found {len(found)}"  # type: ignore[attr-defined]
        raise ValueError(msg)
    return found[0]


def convert_keras_weights(h5_path: str | Path) -> dict[str, torch.Tensor]:
    """
    Convert braai's Keras HDF5 weights to a `~skyblink.engines.networks.Braai` ``state_dict``. Stable.

    Parameters
    ----------
    h5_path : str or Path
        braai's ``models/d6_m7.weights.h5`` (Keras 2.2.4 ``save_weights`` layout: groups
        ``conv1..conv4, fc_1, fc_out``, each holding ``<layer>/kernel:0`` and ``<layer>/bias:0``).

    Returns
    -------
    dict of str to `torch.Tensor`
        ``conv*.weight`` (out, in, kh, kw), ``fc_*.weight`` (out, in) and the biases, float32,
        contiguous; loads into ``Braai()`` with ``strict=True``.

    Raises
    ------
    ImportError
        h5py is not installed.
    KeyError
        A layer group is missing from the file.
    ValueError
        A converted tensor's shape differs from ``Braai``'s.

    Notes
    -----
    Keras Conv2D kernels are HWIO and, like torch, compute a cross-correlation, so they only need
    transposing to OIHW (no flip). Dense kernels are (in, out) and become (out, in). ``fc_1``'s
    input order is Keras's channels-last flatten; ``Braai.forward`` permutes to channels-last
    before flattening, so its rows need no reordering.
    """
    expected = Braai().state_dict()
    state: dict[str, torch.Tensor] = {}
    with h5py.File(Path(h5_path), "r") as f:
        for layer, kind in _LAYERS.items():
            if layer not in f:
                msg = f"{h5_path}: no Keras layer group {layer!r} (groups: {sorted(f)})"
                raise KeyError(msg)
            kernel = np.asarray(_find_dataset(f[layer], "kernel:0"), dtype=np.float32)
            bias = np.asarray(_find_dataset(f[layer], "bias:0"), dtype=np.float32)
            weight = kernel.transpose(3, 2, 0, 1) if kind == "conv" else kernel.T
            for suffix, value in (("weight", weight), ("bias", bias)):
                key = f"{layer}.{suffix}"
                if tuple(value.shape) != tuple(expected[key].shape):
                    msg = (f"{h5_path}: layer {layer!r} {suffix} converts to shape {value.shape}, "
                           f"Braai expects {tuple(expected[key].shape)}; is this a braai d6 (VGG6) file?")
                    raise ValueError(msg)
                state[key] = torch.from_numpy(np.ascontiguousarray(value))
    return state


def _row_l2_normalize(image: np.ndarray) -> np.ndarray:
    """Divide each row by its L2 norm; all-zero rows stay zero (``tf.keras.utils.normalize``)."""
    norms = np.linalg.norm(image, ord=2, axis=-1, keepdims=True)
    norms[norms == 0] = 1.0
    return image / norms


def braai_normalize(science: np.ndarray, template: np.ndarray, difference: np.ndarray) -> np.ndarray:
    """
    Turn one alert's three cutouts into braai d6_m7's input, exactly as ZTF did for ``drb``. Stable.

    Parameters
    ----------
    science, template, difference : (ny, nx) array_like
        Raw cutout pixels (e.g. from `skyblink.storage.alerts.ztf_cutouts`), ny, nx <= 63; may hold NaN.

    Returns
    -------
    stamps : (3, 63, 63) `~numpy.ndarray` of float32
        Channels (science, template, difference), channels-first as `Braai` takes them.

    Raises
    ------
    ValueError
        A cutout is not 2-D or is larger than 63x63.

    Notes
    -----
    braai's ``old_norm`` path (models <= d6_m7, ``nb/braai_run.ipynb``), for each cutout:

    1. NaN -> 0 (``np.nan_to_num``, which also clips +-inf to the largest finite float);
    2. row-wise L2 normalisation: each row divided by its own L2 norm, all-zero rows left at zero
       -- ``tf.keras.utils.normalize(x)`` with its defaults ``axis=-1, order=2``. (One global L2
       norm per image is braai's newer-model path and does not reproduce d6_m7.);
    3. pad at the end of each axis to 63x63 with the constant 1e-9 (after normalising: an edge
       cutout such as 63x53 keeps its real pixels top-left).

    Computed in float32 like upstream (the FITS pixels are float32 and ``tf.keras.utils.normalize``
    keeps the dtype): over the 51 d6_m7 alerts checked this reproduces ``drb`` to 1.2e-7, one
    float32 ulp near 1 (float64 arithmetic gives up to 5e-7).
    """
    channels = []
    for name, cutout in (("science", science), ("template", template), ("difference", difference)):
        image = np.nan_to_num(np.asarray(cutout, dtype=np.float32), nan=0.0)
        if image.ndim != 2 or image.shape[0] > STAMP_SIZE or image.shape[1] > STAMP_SIZE:
            msg = f"{name} cutout must be 2-D and at most {STAMP_SIZE}x{STAMP_SIZE}, got shape {image.shape}"
            raise ValueError(msg)
        image = _row_l2_normalize(image)
        pad = ((0, STAMP_SIZE - image.shape[0]), (0, STAMP_SIZE - image.shape[1]))
        channels.append(np.pad(image, pad, mode="constant", constant_values=BRAAI_PAD_VALUE))
    return np.stack(channels).astype(np.float32)


def braai_normalize_batch(triplets: Iterable[Sequence[np.ndarray]]) -> np.ndarray:
    """
    `braai_normalize` over many alerts. Stable.

    Parameters
    ----------
    triplets : iterable of (science, template, difference)
        One triplet of cutouts per alert (e.g. ``ZtfCutouts.triplet``); shapes may differ.

    Returns
    -------
    stamps : (N, 3, 63, 63) `~numpy.ndarray` of float32
        Zero-length along the first axis when ``triplets`` is empty.
    """
    stamps = [braai_normalize(*triplet) for triplet in triplets]
    if not stamps:
        return np.zeros((0, 3, STAMP_SIZE, STAMP_SIZE), dtype=np.float32)
    return np.stack(stamps)


def shipped_weights_path() -> Path:
    """Return the path of the shipped ``engines/models/braai/d6_m7.npz`` (package data). Stable."""
    return Path(str(resources.files(_PACKAGE).joinpath(*_NPZ_PARTS)))


def load_braai() -> Braai:
    """
    Return `Braai` with the shipped d6_m7 weights, in eval mode, on the CPU. Stable.

    Returns
    -------
    `~skyblink.engines.networks.Braai`
        ``model(torch.from_numpy(braai_normalize_batch(triplets)))`` gives ZTF's ``drb``, (N, 1).

    Raises
    ------
    FileNotFoundError
        The weights are not in the installed package (partial install); regenerate them with
        ``python -m skyblink.evaluation.braai_port d6_m7.weights.h5``.
    IntegrityError
        Their sha256 differs from the one in ``card.json``.
    """
    resource = resources.files(_PACKAGE).joinpath(*_NPZ_PARTS)
    if not resource.is_file():
        msg = (f"braai weights {'/'.join(_NPZ_PARTS)} are missing from package {_PACKAGE}; "
               "regenerate them with `python -m skyblink.evaluation.braai_port d6_m7.weights.h5`")
        raise FileNotFoundError(msg)
    data = resource.read_bytes()
    card = json.loads(resources.files(_PACKAGE).joinpath("models", "braai", "card.json").read_text())
    expected = card.get("weights", {}).get("sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        msg = (f"braai weights {'/'.join(_NPZ_PARTS)}: sha256 {hashlib.sha256(data).hexdigest()[:16]}... differs from "
               f"{expected[:16]}... in its card.json (tampered or corrupt); refusing to load them")
        raise IntegrityError(msg)
    with np.load(io.BytesIO(data), allow_pickle=False) as npz:
        state = {key: torch.from_numpy(np.array(npz[key], dtype=np.float32)) for key in npz.files}
    model = Braai()
    model.load_state_dict(state, strict=True)
    return model.eval()


def save_weights_npz(state: dict[str, torch.Tensor], path: str | Path) -> Path:
    """
    Write a ``state_dict`` as an uncompressed ``.npz`` (one float32 array per key, no pickle).

    The file is byte-for-byte reproducible (fixed member timestamps) and reads with `numpy.load`.

    Parameters
    ----------
    state : dict of str to `torch.Tensor`
        E.g. from `convert_keras_weights`.
    path : str or Path
        Output file; its folder is created.

    Returns
    -------
    Path
        The written file.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for key, value in sorted(state.items()):
            # A fixed timestamp makes the file byte-for-byte reproducible (np.savez stamps "now").
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w") as fh:
                np.lib.format.write_array(fh, np.ascontiguousarray(value.detach().cpu().numpy(), dtype=np.float32),
                                          allow_pickle=False)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    """
    Convert braai's Keras HDF5 weights and write them as the shipped ``.npz``.

    ``python -m skyblink.evaluation.braai_port d6_m7.weights.h5 [--out PATH]``; by default it
    overwrites the package's ``engines/models/braai/d6_m7.npz`` (in an editable install, the
    source tree). Prints the output path and the sha256 of input and output.
    """
    parser = argparse.ArgumentParser(prog="python -m skyblink.evaluation.braai_port",
                                     description="Convert braai's Keras HDF5 weights (d6_m7) to skyblink's .npz.")
    parser.add_argument("h5_path", type=Path, help="braai's models/d6_m7.weights.h5")
    parser.add_argument("--out", type=Path, default=None,
                        help="output .npz (default: the package's engines/models/braai/d6_m7.npz)")
    args = parser.parse_args(argv)
    out = save_weights_npz(convert_keras_weights(args.h5_path), args.out or shipped_weights_path())
    for label, path in (("input", args.h5_path), ("output", out)):
        digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
        sys.stdout.write(f"{label}: {path} sha256={digest}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
