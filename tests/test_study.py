"""The multi-seed study (``jobs/study.py``): mean ± std over seeds, the criteria on the means, resumable, MLflow.

The end-to-end test trains two seeds of a smoke-sized two-stage job on real Ray Train + DeepSpeed and real shards,
then reruns the command: nothing is retrained, the table is the same; then adds AR-Net to the methods: only AR-Net
trains, and its row joins the table (Table B).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from sofnet.study_table import machines_line
from study_helpers import REPO, run_cli, tiny_study


def test_the_shipped_study_configs_load(monkeypatch: pytest.MonkeyPatch) -> None:
    from sofnet.study import arnet_config, load_study, seed_config

    monkeypatch.chdir(REPO)  # base_config is relative to the repository root, where `make study` runs
    study = load_study(REPO / "jobs/configs/study.yaml")
    assert list(study.seeds) == [1, 2, 3] and study.base_config.endswith("bench.yaml")
    demo = load_study(REPO / "jobs/configs/study_demo.yaml")  # make demo: one seed of the study's recipe, shrunk
    assert len(demo.seeds) == 1 and demo.base_config == study.base_config and demo.et_grid == study.et_grid
    assert {o.split("=")[0] for o in demo.overrides} == {  # what the demo changes, each named in its file
        "model.input_size", "data.resize", "train.stage1.epochs", "train.stage1.optim.lr_steps", "train.stage2.epochs",
        "train.stage2.optim.lr_steps", "train.val_every", "train.log_every", "mlflow.experiment",
        "mlflow.registered_model"}
    # the benchmark recipe scores videos by the frames seen (a deviation, docs/studies.md "The frames-seen score"); the
    # demo too
    assert seed_config(study, 1).model.video_score == seed_config(demo, 1007).model.video_score == "frames_seen"
    # the rows' early exit (README, "The early-exit row at rho 0.5, T_min 2"): one point of the grid, so that the
    # SoF-Net + ET row and the criteria are read at a setting the grid shows beside its neighbours
    et = seed_config(study, 1).early_exit
    assert (et.enabled, et.rho, et.t_min) == (True, 0.5, 2) and seed_config(demo, 1007).early_exit == et
    assert et.rho in study.et_grid.rho and et.t_min in study.et_grid.t_min
    # Table B stays the study it was measured as: v4, SoF-Net with the official score, as AR-Net's own
    table_b = load_study(REPO / "jobs/configs/study_table_b.yaml")
    assert table_b.methods == ["tsn", "sofnet", "arnet"] and table_b.name == "bench-study-v4" != study.name
    assert list(table_b.overrides) == ["model.video_score=passed_mean"]
    assert seed_config(table_b, 1).model.video_score == "passed_mean"
    assert table_b.seeds == study.seeds and table_b.et_grid == study.et_grid
    # one epoch rule for every row: each stage's last epoch, AR-Net's stages too
    assert arnet_config(table_b, 1).train.val_every == seed_config(study, 1).train.val_every == 0
    # make study-heldout rescores make study's runs (runs_from names the shipped study) on the held-out shards only
    make = (REPO / "Makefile").read_text().split("study-heldout: bench-heldout")[1].split("\n\n")[0].split()
    heldout = load_study(REPO / "jobs/configs/study.yaml", [a.strip('"') for a in make if "=" in a])
    assert heldout.runs_from == study.name != heldout.name and list(heldout.overrides) == [
        "data.val_shards=data/bench-heldout/shards"]


def test_seeds_flag_continues_the_files_seeds(tmp_path: Path) -> None:
    """``--seeds N``: the file's first N, then consecutive integers past its last, so a longer study keeps every seed
    a shorter one trained; with ``seeds=`` beside it, one line asks for one of them."""
    from sofnet.config import ConfigError
    from sofnet.study import load_study

    path = tiny_study(tmp_path, tmp_path / "no-shards")  # seeds [1, 2]
    assert [list(load_study(path, [], n).seeds) for n in (1, 2, 4)] == [[1], [1, 2], [1, 2, 3, 4]]
    assert list(load_study(REPO / "jobs/configs/study_demo.yaml", [], 3).seeds) == [1007, 1008, 1009]
    with pytest.raises(ConfigError, match=r"^--seeds 3 and seeds= on the command line: give one of them$"):
        load_study(path, ["seeds=[5]"], 3)
    proc = run_cli(tmp_path, path, "--seeds", "0")
    assert proc.returncode == 2 and "argument --seeds: must be a whole number >= 1, not '0'" in proc.stderr


def test_bad_study_config_is_one_line(tmp_path: Path) -> None:
    path = tiny_study(tmp_path, tmp_path / "no-shards")
    proc = run_cli(tmp_path, path, "seeds=[1,1]")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {path}: seeds must be a non-empty list of distinct integers"], proc.stderr
    proc = run_cli(tmp_path, path, "overrides=[a=[1],b]")  # an unquoted nested list: the command line's, not the file's
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: command line: overrides=[a=[1],b]: while parsing a flow sequence"], proc.stderr
    proc = run_cli(tmp_path, path, "seed=[1]")  # an unknown key of the command line: named, and where it came from
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        "error: command line: bad key seed: Key 'seed' not in 'StudyConfig'. Did you mean: 'seeds'?"], proc.stderr
    proc = run_cli(tmp_path, path, "et_grid.rho=[1.5]")
    assert proc.returncode == 2 and "et_grid.rho must be in (0, 1)" in proc.stderr
    proc = run_cli(tmp_path, path, "draws=-1")
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"error: {path}: draws must be >= 0 (0: no intervals), not -1"], proc.stderr
    proc = run_cli(tmp_path, path, "methods=[sofnet,arnet]")
    assert proc.returncode == 2 and "methods must be distinct values of ['tsn', 'sofnet', 'arnet'] and include tsn" \
        in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    proc = run_cli(tmp_path, path, "methods=[tsn,arnet]", f"arnet_config={REPO / 'jobs/configs/bench_arnet.yaml'}")
    assert proc.returncode == 2 and "data.val_shards=data/bench/shards differs from the base config's" in proc.stderr
    proc = run_cli(tmp_path, path, "stage1_from=none")
    assert proc.returncode == 2 and "stage1_from=none: " in proc.stderr and "has no evaluated stage 1 of seed 1" \
        in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    for key in ("name", "runs_from", "stage1_from"):  # one folder name: "../x" would put runs outside output_dir
        proc = run_cli(tmp_path, path, f"{key}=../x")
        assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
            f"error: {path}: {key}='../x' must be letters, digits, '.', '_', '-', a letter or digit first (it names a "
            "folder of the output directory)"], proc.stderr
    proc = run_cli(tmp_path, path)  # shards missing: refused before Ray starts
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1 and "no-shards" in proc.stderr
    assert not (tmp_path / "x").exists() and not (tmp_path.parent / "x").exists()


def test_a_rescoring_study_needs_another_studys_finished_runs(tmp_path: Path) -> None:
    """``runs_from`` trains nothing: a study without the other study's finished runs is refused before anything runs
    (the end-to-end test below rescores real runs)."""
    from sofnet.config import ConfigError
    from sofnet.study import load_study, run_study

    path = tiny_study(tmp_path, tmp_path / "shards")
    for bad in (["runs_from=t"], ["runs_from=u", "stage1_from=u"]):
        with pytest.raises(ConfigError, match=r"runs_from=.* must name another study than this one and stage1_from"):
            load_study(path, bad)
    study = load_study(path, ["runs_from=gone"])
    with pytest.raises(ConfigError, match=r"runs_from=gone: \S*/runs/gone/gone-seed1 has not finished training; run "
                                          r"study gone for it first \(a study with runs_from trains nothing\)$"):
        run_study(study, train=lambda cfgs: pytest.fail(f"{[c.name for c in cfgs]} trained"))
    assert not list((tmp_path / "runs").glob("*/*.recipe.yaml"))  # refused before this study kept a recipe


@pytest.mark.slow
def test_study_two_seeds_end_to_end_and_resume(tmp_path: Path) -> None:
    from mlflow.tracking import MlflowClient

    from sofnet.session import ensure_synthetic_shards

    shards = ensure_synthetic_shards(tmp_path / "data", videos=24, classes=3)
    path = tiny_study(tmp_path, shards)
    first = run_cli(tmp_path, path)
    assert first.returncode == 0, first.stderr[-3000:]
    table = (tmp_path / "runs/t/study_table.md").read_text()
    assert "study t: 2 seeds [1, 2]" in table and "| SoF-Net + ET |" in table and "± " in table
    assert "TSN + ET over the early-exit grid" in table and "| 0.99 |" in table
    assert "| TSN on action frames |" in table  # scored from stage 1's early-exit cache and the annotations
    saved = json.loads((tmp_path / "runs/t/study.json").read_text())
    assert [r["seed"] for r in saved["records"]] == [1, 2]
    # early exit alone vs the gates by where the action starts: its "all videos" row is the table's own rows
    assert "Early exit alone vs the gates, by where the action starts" in table and "| all videos | 6 |" in table
    every, rows = saved["summary"]["by_action_start"][-1], saved["summary"]["rows"]
    assert every["tsn"]["mAP"] == pytest.approx(rows["TSN"]["mAP"][0], abs=1e-9)
    assert every["sofnet_et"]["mAP"] == pytest.approx(rows["SoF-Net + ET"]["mAP"][0], abs=1e-9)
    assert every["sofnet_et"]["gflops"] == pytest.approx(rows["SoF-Net + ET"]["gflops_per_video"][0], rel=1e-9)
    # each mAP/GFLOPs criterion with its interval over draws of the 6 videos, around the measured value
    drawn = {c["name"]: c for c in saved["summary"]["criteria"] if "interval" in c}
    assert len(drawn) == 5 and "| 90 % interval over draws of the videos (met in) |" in table, table
    gflops = drawn["SoF-Net: GFLOPs vs TSN (%)"]
    assert gflops["interval"][0] <= gflops["value"] <= gflops["interval"][1] and 0 <= gflops["met"] <= 1
    assert all("interval" in row for row in saved["summary"]["by_action_start"]) and every["interval"] == drawn[
        "cheapest TSN + ET within the mAP floor / SoF-Net + ET (GFLOPs)"]["interval"]  # all videos: the criterion's
    # where the rows were computed: the training runs' machine tags and the scoring process's, in the header too
    for record in saved["records"]:
        trained, scored = record["machines"]["trained"], record["machines"]["scored"]
        assert len(scored) == 1 and trained and all(level.count(", ") >= 2 for level in trained + scored), record
    assert machines_line(saved["records"]) in table.splitlines()[0]
    # the two seeds really differ (each trained from its own seed), and each seed evaluated the same videos; the
    # class scores, not the summary metrics: those of a model this small on 6 videos can coincide between seeds
    m = [r["reports"]["stage2"]["metrics"] for r in saved["records"]]
    scores = [json.loads((tmp_path / f"runs/t/t-seed{s}-eval/stage2/submission.json").read_text()) for s in (1, 2)]
    assert m[0]["val/videos"] == m[1]["val/videos"] and scores[0]["results"].keys() == scores[1]["results"].keys()
    assert scores[0]["results"] != scores[1]["results"]
    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}")
    # the two seeds' one-worker jobs trained side by side on 2 CPUs: their MLflow job runs overlap in time
    assert "2 training jobs, 2 at a time" in first.stderr
    for seed in (1, 2):  # both jobs' progress lines, none collapsed by Ray's deduplication of similar lines
        assert f"t-seed{seed}/stage2 epoch 1/1 done" in first.stderr, first.stderr[-3000:]
    assert "Error in training function" not in first.stderr, first.stderr[-3000:]  # none retried (MLflow's datasets)
    # the quiet console (sofnet.console) in a log file: no colour codes around the workers' lines, none of the
    # per-epoch library lines it silences
    for noise in ("\x1b[", "Reporting training result", "Checkpoint successfully created", "Successfully registered"):
        assert noise not in first.stderr, (noise, first.stderr[-3000:])
    jobs = client.search_runs([client.get_experiment_by_name("sofnet-demo").experiment_id],
                              "tags.ray_run_name LIKE 't-seed%'")
    spans = {r.data.tags["ray_run_name"]: (r.info.start_time, r.info.end_time) for r in jobs
             if "stage" not in r.data.tags}
    assert sorted(spans) == ["t-seed1", "t-seed2"], spans
    assert max(s for s, _ in spans.values()) < min(e for _, e in spans.values()), spans
    exp = client.get_experiment_by_name("sofnet-study")
    parents = client.search_runs([exp.experiment_id], "tags.sweep_kind = 'study'")
    assert len(parents) == 1
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert sorted(c.data.tags["tune_trial_id"] for c in children) == sorted(
        f"{m}|seed{s}" for m in ("TSN", "TSN + ET", "TSN on action frames", "SoF-Net", "SoF-Net + ET") for s in (1, 2))
    # rerun: both seeds are on disk, nothing trains again, same table, same parent, no duplicate child
    again = run_cli(tmp_path, path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "not retrained" in again.stderr and "training " not in again.stderr
    assert (tmp_path / "runs/t/study_table.md").read_text() == table
    assert len(client.search_runs([exp.experiment_id], "tags.sweep_kind = 'study'")) == 1
    assert len(client.search_runs([exp.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")) == 10
    # another early-exit grid: replayed from the caches (nothing trains or is evaluated again), not ignored
    regrid = run_cli(tmp_path, path, "et_grid.rho=[0.7]", "et_grid.t_min=[1,3]")
    assert regrid.returncode == 0, regrid.stderr[-3000:]
    assert "training " not in regrid.stderr and "evaluating the best epochs (grids)" in regrid.stderr
    grid_rows = [ln for ln in (tmp_path / "runs/t/study_table.md").read_text().splitlines() if ln.startswith("| 0.")]
    assert [ln.split(" | ")[0] for ln in grid_rows] == ["| 0.7", "| 0.7"], grid_rows  # TSN's grid and SoF-Net's
    regridded = json.loads((tmp_path / "runs/t/study.json").read_text())["records"][0]["grids"]["stage2"]
    assert [(p["rho"], p["t_min"]) for p in regridded] == [(0.7, 1), (0.7, 3)]
    # Table B: AR-Net added to seed 1's study trains AR-Net only (the base run is reused) and joins the table
    third = run_cli(tmp_path, tiny_study(tmp_path, shards, arnet=True), "seeds=[1]")
    assert third.returncode == 0, third.stderr[-3000:]
    assert third.stderr.count("seed 1: training ") == 1 and "t-arnet-seed1" in third.stderr
    table_b = (tmp_path / "runs/t/study_table.md").read_text()
    assert "| AR-Net |" in table_b and "| top-5 (%) |" in table_b
    saved = json.loads((tmp_path / "runs/t/study.json").read_text())
    assert saved["records"][0]["reports"]["arnet"]["stage"] == "stage3"
    # AR-Net against TSN and SoF-Net, from its evaluation's per-video outputs: the rows' own differences, and an
    # interval over draws of the videos
    compared, rows = {c["name"]: c for c in saved["summary"]["arnet_comparisons"]}, saved["summary"]["rows"]
    assert len(compared) == 4 and all(c["interval"][0] <= c["interval"][1] for c in compared.values()), compared
    assert compared["AR-Net: mAP - TSN mAP (points)"]["value"] == pytest.approx(
        100 * (rows["AR-Net"]["mAP"][0] - rows["TSN"]["mAP"][0]), abs=1e-6)
    assert compared["SoF-Net: GFLOPs vs AR-Net (%)"]["value"] == pytest.approx(
        100 * rows["SoF-Net"]["gflops_per_video"][0] / rows["AR-Net"]["gflops_per_video"][0], rel=1e-9)
    assert "| AR-Net compared (one seed; no target) | measured | 90 % interval over draws of the videos |" in table_b
    children = client.search_runs([exp.experiment_id], f"tags.`mlflow.parentRunId` = '{parents[0].info.run_id}'")
    assert "AR-Net|seed1" in {c.data.tags["tune_trial_id"] for c in children}
    # stage1_from: another stage-2 recipe on study t's stage 1 trains stage 2 only; its TSN rows are t's evaluation
    s1 = OmegaConf.load(path)
    s1.name, s1.stage1_from, s1.seeds = "t2", "t", [1]
    s1.overrides = list(s1.overrides) + ["loss.beta=0.9"]
    OmegaConf.save(s1, tmp_path / "study_s1.yaml")
    fourth = run_cli(tmp_path, tmp_path / "study_s1.yaml")
    assert fourth.returncode == 0, fourth.stderr[-3000:]
    assert fourth.stderr.count("seed 1: training ") == 1 and "t2-seed1" in fourth.stderr
    assert not list((tmp_path / "runs/t2/t2-seed1").glob("checkpoint-stage1*")) and \
        list((tmp_path / "runs/t2/t2-seed1").glob("checkpoint-stage2*"))
    source = json.loads((tmp_path / "runs/t/t-seed1-eval/seed.json").read_text())
    shared = json.loads((tmp_path / "runs/t2/study.json").read_text())["records"][0]
    assert shared["reports"]["stage1"] == source["reports"]["stage1"] and shared["grids"]["stage1"] == \
        source["grids"]["stage1"] and shared["stage1_run"].endswith("t/t-seed1")
    assert "stage2" in shared["reports"] and "stage 1 from study t" in (tmp_path / "runs/t2/study_table.md").read_text()
    for bad, why in (("et_grid.rho=[0.5]", "another et_grid"), ("overrides=[early_exit.t_min=1]", "early_exit.t_min=")):
        refused = run_cli(tmp_path, tmp_path / "study_s1.yaml", "name=t3", bad)  # TSN's rows were scored otherwise
        assert refused.returncode == 2 and why in refused.stderr and len(refused.stderr.strip().splitlines()) == 1, \
            refused.stderr
    # runs_from: t's trained runs scored on other validation videos (a held-out set): nothing trains, every stage of
    # every seed is scored here from t's weights; t2 (stage 1 from t) likewise, its stage 1 scored here from t's run
    other = ensure_synthetic_shards(tmp_path / "other", videos=24, classes=3, seed=5)
    rescore = OmegaConf.load(path)
    rescore.name, rescore.runs_from = "t4", "t"
    rescore.overrides = list(rescore.overrides) + [f"data.val_shards={other}"]
    OmegaConf.save(rescore, tmp_path / "study_r.yaml")
    fifth = run_cli(tmp_path, tmp_path / "study_r.yaml")
    assert fifth.returncode == 0, fifth.stderr[-3000:]
    assert "training " not in fifth.stderr and not list((tmp_path / "runs/t4").glob("t4-seed?/"))
    assert "the trained runs of study t (nothing trained here)" in (tmp_path / "runs/t4/study_table.md").read_text()
    rescored = json.loads((tmp_path / "runs/t4/study.json").read_text())["records"]
    for seed, record in zip((1, 2), rescored):
        before = json.loads((tmp_path / f"runs/t/t-seed{seed}-eval/seed.json").read_text())
        assert record["run"] == before["run"] and set(record["reports"]) == set(before["reports"]) - {"arnet"}
        for stage in ("stage1", "stage2"):  # the same weights (the runs' MLflow ids), other videos
            assert record["reports"][stage]["runs"] == before["reports"][stage]["runs"]
        ids = json.loads((tmp_path / f"runs/t4/t4-seed{seed}-eval/stage2/submission.json").read_text())["results"]
        assert not set(ids) & set(scores[seed - 1]["results"]) and len(ids) == 6
    rescore.overrides = list(rescore.overrides)[:-1]  # t4 again on t's own videos: its scores are of others, refused
    OmegaConf.save(rescore, tmp_path / "study_r1.yaml")
    again = run_cli(tmp_path, tmp_path / "study_r1.yaml")
    assert again.returncode == 2 and len(again.stderr.strip().splitlines()) == 1, again.stderr
    assert f"t4-seed1 was scored with other settings (data.val_shards: {other} -> {shards}; shards_digest." in \
        again.stderr and again.stderr.strip().endswith("to score it anew"), again.stderr
    both = OmegaConf.load(tmp_path / "study_s1.yaml")
    both.name, both.runs_from = "t5", "t2"
    both.overrides = list(both.overrides) + [f"data.val_shards={other}"]
    OmegaConf.save(both, tmp_path / "study_r2.yaml")
    sixth = run_cli(tmp_path, tmp_path / "study_r2.yaml")
    assert sixth.returncode == 0 and "training " not in sixth.stderr, sixth.stderr[-3000:]
    record = json.loads((tmp_path / "runs/t5/study.json").read_text())["records"][0]
    assert record["stage1_run"].endswith("t/t-seed1") and record["run"].endswith("t2/t2-seed1")
    assert record["reports"]["stage1"]["metrics"] == rescored[0]["reports"]["stage1"]["metrics"]  # t's, here
    assert record["reports"]["stage2"]["runs"] == shared["reports"]["stage2"]["runs"]
    # a rescored study whose recipe is not the runs' (a training setting changed): refused in one line, nothing run
    rescore.name, rescore.overrides = "t6", list(rescore.overrides) + ["loss.beta=0.9"]
    OmegaConf.save(rescore, tmp_path / "study_r3.yaml")
    refused = run_cli(tmp_path, tmp_path / "study_r3.yaml")
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert "runs_from=t: t-seed1 was trained with other settings (loss.beta: 0.5 -> 0.9)" in refused.stderr and \
        "only scoring (data.val_shards, " in refused.stderr
    # another early exit under t's name: t's finished runs are scored again at it (nothing retrains, not refused);
    # each SoF-Net + ET row is the full evaluation at the new setting, equal to the grid's point replayed for it
    et = OmegaConf.load(path)
    et.overrides = list(et.overrides) + ["early_exit.rho=0.5", "early_exit.t_min=1"]
    OmegaConf.save(et, tmp_path / "study_et.yaml")
    seventh = run_cli(tmp_path, tmp_path / "study_et.yaml")
    assert seventh.returncode == 0 and "training " not in seventh.stderr, seventh.stderr[-3000:]
    assert seventh.stderr.count("scoring its trained runs again (nothing retrained): early exit rho=0.5 t_min=1, "
                                "not rho=0.99 t_min=3") == 2, seventh.stderr[-3000:]
    assert "ET in rows: rho=0.5 t_min=1" in (tmp_path / "runs/t/study_table.md").read_text()
    for record in json.loads((tmp_path / "runs/t/study.json").read_text())["records"]:
        assert record["scored_with"]["early_exit.rho"] == 0.5 and record["scored_with"]["early_exit.t_min"] == 1
        point = next(p for p in record["grids"]["stage2"] if (p["rho"], p["t_min"]) == (0.5, 1))
        for key in ("val/et/mAP", "val/et/gflops_per_video", "val/et/frame_usage"):
            assert record["reports"]["stage2"]["metrics"][key] == pytest.approx(point[key], abs=1e-6), key
