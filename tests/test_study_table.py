"""The study's table (``sofnet.study_table``): mean ± std over seeds, the criteria on the means, Table B's rows and
the header naming the kernels each seed ran on; from records made here, nothing trained (``tests/test_study.py``
trains).
"""

from __future__ import annotations

import pytest

from sofnet.study_table import Targets, criteria, machines_line, study_table, summarize


def _record(seed: int, tsn_map: float, sof_map: float, sof_gf: float, et_gf: float, bg: float, act: float) -> dict:
    tsn = {"val/mAP": tsn_map, "val/top1": tsn_map, "val/gflops_per_video": 1.0, "val/frame_usage": 1.0,
           "val/et/mAP": tsn_map - 0.05, "val/et/top1": tsn_map, "val/et/gflops_per_video": 0.6,
           "val/et/frame_usage": 0.6}
    sof = {"val/mAP": sof_map, "val/top1": sof_map, "val/gflops_per_video": sof_gf, "val/frame_usage": 0.5,
           "val/stop_rate/background/block2": bg, "val/stop_rate/action/block2": act,
           "val/et/mAP": sof_map, "val/et/top1": sof_map, "val/et/gflops_per_video": et_gf, "val/et/frame_usage": 0.3,
           "val/et/stop_rate/background/block2": bg, "val/et/stop_rate/action/block2": act}
    grid = [{"rho": 0.9, "t_min": 1, "val/et/mAP": tsn_map - 0.2, "val/et/gflops_per_video": 0.2},
            {"rho": 0.99, "t_min": 3, "val/et/mAP": tsn_map - 0.005, "val/et/gflops_per_video": 0.7}]
    return {"seed": seed, "run": f"r{seed}", "reports": {"stage1": {"metrics": tsn, "runs": {}},
                                                         "stage2": {"metrics": sof, "runs": {}}},
            "grids": {"stage1": grid, "stage2": grid}}


def test_mean_std_and_criteria() -> None:
    records = [_record(1, 0.90, 0.895, 0.60, 0.40, 0.9, 0.1), _record(2, 0.92, 0.915, 0.64, 0.44, 0.8, 0.2)]
    s = summarize(records, Targets())
    mean, std = s["rows"]["SoF-Net"]["mAP"]
    assert mean == pytest.approx(0.905) and std == pytest.approx(0.01414, abs=1e-4)  # sample std (ddof 1)
    assert s["rows"]["SoF-Net + ET"]["gflops_ratio"][0] == pytest.approx(0.42)
    got = {c["name"]: c for c in s["criteria"]}
    assert got["SoF-Net: GFLOPs vs TSN (%)"]["ok"] and got["SoF-Net: mAP - TSN mAP (points)"]["ok"]
    assert got["SoF-Net + ET: GFLOPs vs TSN (%)"]["value"] == pytest.approx(42.0)
    # the cheapest TSN + ET grid point within 1 point of TSN is (0.99, 3) at 0.7: 0.7 / 0.42 = 1.67 >= 1.3
    gates = got["cheapest TSN + ET within the mAP floor / SoF-Net + ET (GFLOPs)"]
    assert gates["value"] == pytest.approx(0.7 / 0.42) and gates["ok"]
    assert got["SoF-Net: background / action frames stopped by layer2"]["value"] == pytest.approx(0.85 / 0.15)
    table = study_table(s, "header")
    assert "| SoF-Net | 90.5 ± 1.4 |" in table and "MISSED" not in table and table.count("| met |") == 10


def test_tsn_on_action_frames_is_a_row_not_a_criterion() -> None:
    """The diagnostic row sits under TSN's, its GFLOPs against TSN's, and changes no criterion."""
    records = [_record(1, 0.90, 0.895, 0.60, 0.40, 0.9, 0.1), _record(2, 0.92, 0.915, 0.64, 0.44, 0.8, 0.2)]
    before = summarize(records, Targets())
    for r, m in zip(records, (0.86, 0.88)):
        r["reports"]["action_frames"] = {"stage": "stage1", "runs": {}, "metrics": {
            "val/mAP": m, "val/top1": m, "val/gflops_per_video": 0.4, "val/frame_usage": 0.4}}
    s = summarize(records, Targets())
    assert list(s["rows"]) == ["TSN", "TSN + ET", "TSN on action frames", "SoF-Net", "SoF-Net + ET"]
    assert s["rows"]["TSN on action frames"]["gflops_ratio"][0] == pytest.approx(0.4)
    assert s["criteria"] == before["criteria"]
    assert "| TSN on action frames | 87.0 ± 1.4 |" in study_table(s)


def test_one_seed_has_no_spread_to_check() -> None:
    """``make demo`` is a study of one seed: its table shows values, not "± 0.0", and no std criterion reads "met"."""
    s = summarize([_record(1, 0.90, 0.895, 0.60, 0.40, 0.9, 0.1)], Targets())
    names = [c["name"] for c in s["criteria"]]
    assert len(names) == 6 and not any("seed std" in n for n in names)
    table = study_table(s)
    assert "±" not in table and "| SoF-Net | 89.5 | 89.5 |" in table and "one seed: no spread to check" in table
    assert table.count("| met |") == 6


def test_table_b_rows_with_arnet() -> None:
    records = [_record(1, 0.90, 0.895, 0.60, 0.40, 0.9, 0.1), _record(2, 0.92, 0.915, 0.64, 0.44, 0.8, 0.2)]
    for r, top1 in zip(records, (0.80, 0.84)):
        r["reports"]["arnet"] = {"stage": "stage3", "runs": {"stage3": "x"}, "metrics": {
            "val/mAP": top1, "val/top1": top1, "val/top5": 1.0, "val/gflops_per_video": 0.9, "val/frame_usage": 0.7}}
    s = summarize(records, Targets(), ["tsn", "sofnet", "arnet"])
    assert list(s["rows"]) == ["TSN", "TSN + ET", "SoF-Net", "SoF-Net + ET", "AR-Net"]
    assert s["rows"]["AR-Net"]["top1"][0] == pytest.approx(0.82) and s["rows"]["AR-Net"]["gflops_ratio"][0] == 0.9
    table = study_table(s)
    row = "| AR-Net | 82.0 ± 2.8 | 82.0 ± 2.8 | 100.0 ± 0.0 | 0.900 ± 0.000 | 90.0 ± 0.0 | 70.0 ± 0.0 | - |"
    assert row in table
    only = summarize(records, Targets(), ["tsn", "arnet"])  # no SoF-Net: no SoF-Net rows, grid or criteria
    assert list(only["rows"]) == ["TSN", "TSN + ET", "AR-Net"] and list(only["grids"]) == ["TSN + ET"]
    assert only["criteria"] == [] and "criterion" not in study_table(only)


def test_criteria_miss_when_gates_add_nothing() -> None:
    rows = {"TSN": {"mAP": (0.9, 0.0), "gflops_ratio": (1.0, 0.0)},
            "SoF-Net": {"mAP": (0.85, 0.03), "gflops_ratio": (0.5, 0.1)},
            "SoF-Net + ET": {"mAP": (0.9, 0.0), "gflops_ratio": (0.45, 0.0)}}
    grid = [{"rho": 0.9, "t_min": 1, "mAP": (0.895, 0.0), "gflops_ratio": (0.5, 0.0)}]
    got = {c["name"]: c["ok"] for c in criteria(rows, grid, Targets())}
    assert got == {"SoF-Net: mAP - TSN mAP (points)": False, "SoF-Net: GFLOPs vs TSN (%)": True,
                   "SoF-Net + ET: mAP - TSN mAP (points)": True, "SoF-Net + ET: GFLOPs vs TSN (%)": True,
                   "cheapest TSN + ET within the mAP floor / SoF-Net + ET (GFLOPs)": False,
                   "SoF-Net: seed std of mAP (points)": False, "SoF-Net: seed std of GFLOPs vs TSN (points)": False,
                   "SoF-Net + ET: seed std of mAP (points)": True,
                   "SoF-Net + ET: seed std of GFLOPs vs TSN (points)": True}


def test_the_header_says_which_kernels_trained_and_scored_each_seed() -> None:
    from sofnet.machine import kernel_level

    native = kernel_level({"machine.cpu_model": "Xeon", "machine.aten_capability": "AVX512", "machine.threads": "2"})
    avx2 = kernel_level({"machine.cpu_model": "Xeon", "machine.aten_capability": "AVX2", "machine.threads": "2",
                         "machine.env.ONEDNN_MAX_CPU_ISA": "AVX2", "machine.env.ATEN_CPU_CAPABILITY": "avx2"})
    assert (native, avx2) == ("Xeon, AVX512, 2 threads", "Xeon, AVX2, ONEDNN_MAX_CPU_ISA=AVX2, 2 threads")
    assert kernel_level({"machine.cpu_model": "Xeon", "machine.aten_capability": "AVX2", "machine.threads": "1",
                         "machine.env.ONEDNN_MAX_CPU_ISA": "AVX2", "machine.env.MKL_ENABLE_INSTRUCTIONS": "AVX2"}) \
        == "Xeon, AVX2, ONEDNN_MAX_CPU_ISA=AVX2, MKL_ENABLE_INSTRUCTIONS=AVX2, 1 thread"  # MKL's own cap, if set
    assert kernel_level({"machine.cpu_model": "Xeon", "machine.aten_capability": "AVX512", "machine.threads": "1"}) \
        == "Xeon, AVX512, 1 thread"  # a Ray Train worker's: one CPU each
    same = [{"seed": s, "machines": {"trained": [native], "scored": [native]}} for s in (1, 2)]
    assert machines_line(same) == "trained and scored on Xeon, AVX512, 2 threads"
    rescored = [{**r, "machines": {"trained": [native], "scored": [avx2]}} for r in same]
    assert machines_line(rescored) == f"trained on {native}; scored on {avx2}"
    mixed = same[:1] + [{"seed": 2, "machines": {"trained": [avx2], "scored": [native]}},
                        {"seed": 3, "machines": {"trained": [native]}}]  # seed 3: evaluated before they were kept
    assert machines_line(mixed) == (f"trained on {native} (seeds 1, 3); {avx2} (seed 2); "
                                    f"scored on {native} (seeds 1, 2); not recorded (seed 3)")
