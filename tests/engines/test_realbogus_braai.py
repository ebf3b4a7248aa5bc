"""
`BraaiClassifier`: braai's trunk inside skyblink's classifier takes the classifier's own stamps and
makes braai's input itself; with pedestal 0 and raw ZTF cutouts it *is* braai (it reproduces ``drb``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the networks are torch modules (the dev extra installs torch)")

from skyblink.engines.networks import BRAAI_PEDESTAL, BraaiClassifier, Classifier  # noqa: E402
from skyblink.evaluation.braai_port import BRAAI_MODEL, braai_normalize, load_braai  # noqa: E402
from skyblink.model_io import STAMP_SIZE  # noqa: E402
from skyblink.storage.alerts.ztf_cutouts import cutouts_from_record, is_ztf_alert, iter_avro_records  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def _braai_net(pedestal: tuple[float, float, float]) -> BraaiClassifier:
    """The network with braai's weights and its output layer = braai's own (v1.0's part at zero)."""
    net = BraaiClassifier(pedestal=pedestal)
    net.braai.load_state_dict(load_braai().state_dict())
    return net.use_braai_output().eval()


@pytest.mark.skipif(not (SHARED_DATA / "fink-client").is_dir(), reason=f"no real ZTF alerts under {SHARED_DATA}")
def test_braai_branch_reproduces_drb_on_raw_cutouts() -> None:
    # Full 63x63 cutouts without NaN: braai's row-wise L2 is then the whole of ZTF's pre-processing.
    triplets, drb = [], []
    for path in sorted((SHARED_DATA / "fink-client").glob("*.avro")):
        for record in iter_avro_records(path):
            if not is_ztf_alert(record):
                continue
            cut = cutouts_from_record(record, source=path)
            raw = [np.asarray(c, np.float32) for c in cut.triplet]
            if (cut.drbversion == BRAAI_MODEL and all(c.shape == (STAMP_SIZE, STAMP_SIZE) for c in raw)
                    and all(np.isfinite(c).all() and np.abs(c).max() < 1e30 for c in raw)):
                triplets.append(np.stack(raw))
                drb.append(cut.drb)
    assert len(triplets) >= 5, "too few full-size d6_m7 ZTF alerts to check"
    x = torch.from_numpy(np.stack(triplets))
    net = _braai_net((0.0, 0.0, 0.0))
    expected = np.stack([braai_normalize(*t) for t in triplets])
    with torch.no_grad():
        np.testing.assert_allclose(net.braai_input(x).numpy(), expected, rtol=1e-5, atol=1e-7)
        rb, classes = net(x)
    np.testing.assert_allclose(rb[:, 0].numpy(), np.array(drb), atol=1e-4)
    assert classes.shape == (len(triplets), 7)


def test_braai_input_is_finite_in_fp16_for_bright_stars() -> None:
    # A 3000-sigma star squares to 9e6 (fp16 tops out at 65504): the row scaling keeps it finite.
    rng = np.random.default_rng(3)
    x = rng.normal(size=(2, 3, STAMP_SIZE, STAMP_SIZE)).astype(np.float32)
    x[:, :, 31, 28:35] = 3000.0
    net = BraaiClassifier()
    ref = net.braai_input(torch.from_numpy(x))
    half = net.half().braai_input(torch.from_numpy(x).half()).float()
    assert torch.isfinite(half).all()
    np.testing.assert_allclose(half.numpy(), ref.numpy(), atol=2e-3)
    np.testing.assert_allclose((ref * ref).sum(-1).numpy(), 1.0, rtol=1e-5)  # every row has unit L2 norm


def test_classifier_part_and_outputs() -> None:
    torch.manual_seed(0)
    net = BraaiClassifier().eval()
    assert tuple(net.pedestal.flatten().tolist()) == BRAAI_PEDESTAL
    sky = Classifier().eval()
    net.sky.load_state_dict(sky.state_dict())
    x = torch.randn(4, 3, STAMP_SIZE, STAMP_SIZE)
    with torch.no_grad():
        h_sky, h_braai = net.features(x)
        rb, probs = net(x)
        _, sky_probs = sky(x)
    assert h_sky.shape == (4, 128) and h_braai.shape == (4, 256)
    assert rb.shape == (4, 1) and ((rb > 0) & (rb < 1)).all()
    torch.testing.assert_close(probs, sky_probs)  # the class head is v1.0's
