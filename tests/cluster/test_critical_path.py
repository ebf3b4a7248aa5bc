"""
The critical path in the night run's report: where the time of the slowest exposure (``--watch``)
or of the run went, stage by stage, in order, summing to its latency.
"""

from __future__ import annotations

import pytest

from skyblink.cluster.night import NightRunReport, critical_path


def test_critical_path_names_the_stages_in_order_and_sums_to_the_latency() -> None:
    appeared = 1000.0
    marks = [("wait", 1000.4), ("ingest", 1001.6), ("plan", 1001.7), ("dispatch", 1003.2),
             ("reference_catalogs", 1003.25), ("reduce", 1003.8), ("publish", 1004.2)]
    path = critical_path(appeared, marks, exposure="F00-001")
    assert path["exposure"] == "F00-001"
    assert [s["stage"] for s in path["stages"]] == [m[0] for m in marks]
    assert path["latency_s"] == pytest.approx(4.2)
    assert sum(s["seconds"] for s in path["stages"]) == pytest.approx(path["latency_s"], abs=1e-3 * len(marks))
    assert sum(s["share"] for s in path["stages"]) == pytest.approx(1.0, abs=1e-3)
    seconds = {s["stage"]: s["seconds"] for s in path["stages"]}
    assert seconds["wait"] == pytest.approx(0.4) and seconds["dispatch"] == pytest.approx(1.5)
    # Contiguous: each stage starts where the one before ended, the first at the file's appearing.
    assert path["stages"][0]["start_s"] == 0.0
    for before, after in zip(path["stages"], path["stages"][1:], strict=False):
        assert after["start_s"] == before["end_s"]
    assert path["stages"][-1]["end_s"] == path["latency_s"]


def test_a_file_stamped_after_its_cycle_began_gets_no_negative_stage() -> None:
    """A file whose time is later than its cycle's start (it landed while the cycle listed) waits 0 s."""
    path = critical_path(10.0, [("wait", 9.5), ("ingest", 10.25), ("publish", 11.0)], exposure="F00-002")
    assert [s["seconds"] for s in path["stages"]] == [0.0, 0.25, 0.75]
    assert path["latency_s"] == pytest.approx(1.0)


def test_the_report_json_carries_the_critical_path() -> None:
    report = NightRunReport(critical_path=critical_path(0.0, [("startup", 2.0), ("ingest", 3.0)]))
    out = report.to_json()
    assert out["critical_path"]["latency_s"] == 3.0
    assert [s["share"] for s in out["critical_path"]["stages"]] == pytest.approx([2 / 3, 1 / 3], abs=1e-4)


def test_the_summary_says_the_critical_path_in_one_line() -> None:
    from skyblink._cli_night import _critical_path_line

    line = _critical_path_line(critical_path(0.0, [("wait", 0.5), ("ingest", 2.0), ("publish", 2.5)],
                                             exposure="F00-001"))
    assert line == ("slowest exposure F00-001, file -> alerts in Redis 2.5 s: wait 0.5 s (20 %) -> ingest 1.5 s (60 %) "
                    "-> publish 0.5 s (20 %)")
    assert _critical_path_line(critical_path(0.0, [("startup", 1.0)])).startswith("the run 1.0 s: startup 1.0 s (100 %)")


def test_what_ran_beside_the_path_is_listed_as_it_ran_and_not_summed() -> None:
    """The whole ingest and the actors' warm-up ran beside the path: listed with their own times, the path's sum unchanged."""
    marks = [("startup", 5.0), ("ingest", 6.0), ("plan", 6.1), ("workers_start", 9.0), ("dispatch", 20.0)]
    beside = [("redis", 5.0, 5.2), ("workers_warmup", 4.9, 9.0), ("ingest", 5.0, 12.0)]
    path = critical_path(0.0, marks, overlapped=beside)
    assert path["latency_s"] == 20.0
    assert sum(s["seconds"] for s in path["stages"]) == pytest.approx(20.0, abs=1e-3)
    assert path["overlapped"] == [
        {"stage": "redis", "start_s": 5.0, "end_s": 5.2, "seconds": 0.2},
        {"stage": "workers_warmup", "start_s": 4.9, "end_s": 9.0, "seconds": 4.1},
        {"stage": "ingest", "start_s": 5.0, "end_s": 12.0, "seconds": 7.0},
    ]
    # The path's ingest is the wait for the first CCD (1 s), the whole ingest (7 s) ran beside the dispatch.
    assert {s["stage"]: s["seconds"] for s in path["stages"]}["ingest"] == 1.0
    assert critical_path(0.0, marks)["overlapped"] == []
