"""A study's runs are reused by name, so each run keeps its recipe: a changed recipe under the same name is refused,
another AR-Net recipe is another job, other data at the same path is refused, another early exit is scored again;
nothing trains here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from study_helpers import tiny_study


def test_a_changed_recipe_under_the_same_name_is_refused(tmp_path: Path) -> None:
    from sofnet.config import ConfigError
    from sofnet.study import arnet_config, check_recipe, load_study, seed_config

    path = tiny_study(tmp_path, tmp_path / "shards", arnet=True)
    study = load_study(path)
    check_recipe(study, seed_config(study, 1))  # first sight: kept
    check_recipe(study, seed_config(study, 1))  # the same settings: fine
    changed = load_study(path)
    changed.overrides = list(changed.overrides) + ["model.tau0=2.0"]
    with pytest.raises(ConfigError, match=r"t-seed1.recipe.yaml: t-seed1 was trained with other settings \(.*"
                                          r"model.tau0: 5.0 -> 2.0.*give the study another name, "
                                          r"or remove .*/t to train it anew$"):
        check_recipe(changed, seed_config(changed, 1))
    check_recipe(study, arnet_config(study, 1))
    other = load_study(path)
    other.arnet_overrides = list(other.arnet_overrides) + ["loss.arnet_eff=relative", "mlflow.experiment=elsewhere"]
    with pytest.raises(ConfigError, match=r"loss.arnet_eff: official -> relative"):
        check_recipe(other, arnet_config(other, 1))
    kept = tmp_path / "runs" / "t" / "t-seed1.recipe.yaml"
    recipe = kept.read_text()
    assert "gate_margin" in recipe  # a setting added after a run was trained is absent from its file: its default
    kept.write_text("\n".join(line for line in recipe.splitlines() if "gate_margin" not in line) + "\n")
    check_recipe(study, seed_config(study, 1))
    margin = load_study(path)
    margin.overrides = list(margin.overrides) + ["loss.gate_margin=0.1"]
    with pytest.raises(ConfigError, match=r"loss.gate_margin: 0.0 -> 0.1"):
        check_recipe(margin, seed_config(margin, 1))
    tsn_only = load_study(path, ["methods=[tsn]"])  # stage 2 off leaves stage 1's recipe as it was
    check_recipe(tsn_only, seed_config(tsn_only, 1))


def test_another_arnet_name_is_another_arnet_job_beside_the_same_base_runs(tmp_path: Path) -> None:
    """A changed AR-Net recipe under the study's name is refused (its runs are reused by name); another
    ``arnet_name`` names other AR-Net runs, and a seed whose record holds the old AR-Net row evaluates the new one
    (the base runs' rows stay)."""
    from sofnet.config import ConfigError
    from sofnet.study import _missing, arnet_config, check_recipe, load_study, seed_config
    from sofnet.study_recipe import scoring_of
    from sofnet.train.worker import enabled_stages, run_dir

    path = tiny_study(tmp_path, tmp_path / "shards", arnet=True)
    study = load_study(path)
    old = arnet_config(study, 1)
    assert old.name == "t-arnet-seed1"
    check_recipe(study, old)
    record = {"seed": 1, "reports": {s: {} for s in enabled_stages(seed_config(study, 1))}, "grids": {},
              "arnet_run": str(run_dir(old)), "scored_with": scoring_of(seed_config(study, 1))}
    record["reports"].update(action_frames={}, arnet={"stage": "stage3"})
    assert _missing(study, 1, record) == ["arnet"]  # scored before its per-video outputs were kept: scored again
    kept = tmp_path / "runs/t/t-seed1-eval/arnet/stage3/per_video.npz"
    kept.parent.mkdir(parents=True)
    kept.write_bytes(b"")
    assert _missing(study, 1, record) == []
    last = load_study(path)
    last.arnet_overrides = list(last.arnet_overrides) + ["train.val_every=0"]  # the same name: refused, the way out
    with pytest.raises(ConfigError, match=r"t-arnet-seed1 was trained with other settings \(train.val_every: 1 -> 0"
                                          r"\).*give the study another name \(or AR-Net another arnet_name\)"):
        check_recipe(last, arnet_config(last, 1))
    last.arnet_name = "arnet-last"
    new = arnet_config(last, 1)
    assert new.name == "t-arnet-last-seed1" and run_dir(new) != run_dir(old) and new.train.val_every == 0
    check_recipe(last, new)  # first sight of this job: kept beside the old one's
    assert _missing(last, 1, record) == ["arnet"]  # only AR-Net: the base runs' rows are reused
    with pytest.raises(ConfigError, match=r"arnet_name='a/b' must be letters, digits"):
        load_study(path, ["arnet_name=a/b"])


def test_another_early_exit_scores_the_finished_runs_again(tmp_path: Path) -> None:
    """Early exit acts at evaluation only: under a finished study's name another ``early_exit`` is not a changed recipe
    (refused) but another scoring, so the seed's evaluation is done again (``rescore``) and nothing retrains; a record
    from before ``scored_with`` was kept is read from its evaluation's ``metrics.json``."""
    from sofnet.study import _missing, check_recipe, load_study, seed_config
    from sofnet.study_recipe import EARLY_EXIT, scoring_of
    from sofnet.train.worker import enabled_stages

    path = tiny_study(tmp_path, tmp_path / "shards")
    study = load_study(path)
    check_recipe(study, seed_config(study, 1))
    scored = scoring_of(seed_config(study, 1))
    assert set(scored) == set(EARLY_EXIT) == {"early_exit.enabled", "early_exit.rho", "early_exit.t_min",
                                              "early_exit.mode"} and scored["early_exit.rho"] == 0.99
    record = {"seed": 1, "reports": {s: {} for s in enabled_stages(seed_config(study, 1))}, "grids": {},
              "scored_with": scored}
    record["reports"]["action_frames"] = {}
    assert _missing(study, 1, record) == []
    et = load_study(path)
    et.overrides = list(et.overrides) + ["early_exit.rho=0.5", "early_exit.t_min=2"]
    check_recipe(et, seed_config(et, 1))  # not refused: the weights do not depend on it
    assert _missing(et, 1, record) == ["rescore"]
    del record["scored_with"]  # an older record: its evaluation says what it was scored with
    assert _missing(study, 1, record) == ["rescore"]  # nothing says: scored again
    metrics = tmp_path / "runs/t/t-seed1-eval/stage1/metrics.json"
    metrics.parent.mkdir(parents=True)
    metrics.write_text(json.dumps({"early_exit": {"enabled": True, "rho": 0.99, "t_min": 3, "mode": "reached"}}))
    assert _missing(study, 1, record) == [] and _missing(et, 1, record) == ["rescore"]
    bad = load_study(path)
    bad.overrides = list(bad.overrides) + ["early_exit.rho=0.5", "model.tau0=2.0"]  # ... but not with a trained key
    with pytest.raises(Exception, match=r"trained with other settings \(model.tau0: 5.0 -> 2.0\)"):
        check_recipe(bad, seed_config(bad, 1))


def test_runs_on_other_data_at_the_same_path_are_refused(tmp_path: Path) -> None:
    """Regenerated shards at the same path (the benchmark data before mbtree=0 changed with every generation) must
    not reuse the runs trained on the old ones: the recipe keeps the manifest's digests and compares them."""
    import shutil

    from sofnet.config import ConfigError
    from sofnet.session import ensure_synthetic_shards
    from sofnet.study import DIGESTS, check_recipe, load_study, seed_config

    shards = ensure_synthetic_shards(tmp_path / "data", videos=8, classes=3, seed=0)
    path = tiny_study(tmp_path, shards)
    study = load_study(path)
    check_recipe(study, seed_config(study, 1))
    kept = tmp_path / "runs" / "t" / "t-seed1.recipe.yaml"
    recipe = OmegaConf.load(kept)
    manifest = json.loads((shards / "manifest.json").read_text())
    assert [recipe[k] for k in DIGESTS] == [manifest["subsets"][s]["digest"] for s in ("training", "validation")]
    check_recipe(study, seed_config(study, 1))  # the same data: reused
    shutil.rmtree(tmp_path / "data")
    ensure_synthetic_shards(tmp_path / "data", videos=8, classes=3, seed=1)  # other videos, the same path
    digest = recipe[DIGESTS[0]][:12]
    with pytest.raises(ConfigError, match=r"t-seed1.recipe.yaml: t-seed1 was trained on other training shards than "
                                          rf"{shards} holds now \(digest {digest} -> .*give the study"):
        check_recipe(study, seed_config(study, 1))
    kept.write_text("\n".join(line for line in kept.read_text().splitlines() if "shards_digest" not in line) + "\n")
    with pytest.raises(ConfigError, match=r"t-seed1 was trained before the study recorded its shards' digests"):
        check_recipe(study, seed_config(study, 1))  # a recipe kept before the digests: its data is unknown
