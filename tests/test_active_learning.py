"""Active learning (issue 28) through the real commands on the tiny dataset: a model (``nnUNetTrainerPlugin``,
fold 0 with 3 labeled cases; its unlabeled pool: the 4 ``imagesUnlabeled`` scans and fold 0's 3 hidden
training cases) trained once with ``nnUNetv2_train``; ``nnUNetv2_sss_suggest``, ``nnUNetv2_predict
--save_probabilities``, ``nnUNetv2_sss_add_labels``, ``nnUNetv2_preprocess``.

- the suggestion equals what the strategy says on ``nnUNetv2_predict``'s own probabilities of the same
  model (entropy over the whole pool, foreground-random), with nnU-Net's mirroring;
- the suggested set is the pool's: never a labeled, validation or test case (``--hidden-only``: the
  split's hidden training cases only); ``random`` and ``foreground-random`` are seeded and reproducible;
- killed midway and started again: no partial output, the same suggestions;
- mutual information with an EMA trainer's teacher and student, refused for a single prediction;
- one ``ERROR:`` line each for a model of another dataset / plans / configuration, an empty pool, K larger
  than the pool, scores of other settings or older than the checkpoint;
- new labels make their scans labeled training cases, preprocessed as ``nnUNetv2_preprocess`` does, the
  splits and the pool consistent; ``--reveal``; bad labels are refused before anything changes.

In-process calls (``main(argv)`` of the command, as its console script runs it) where a process of its own
would add only start-up time.
"""
from __future__ import annotations

import csv
import json
import os
import shutil

import numpy as np
import pytest
import torch

from helpers import kill_at_first_output, run_cli

pytestmark = pytest.mark.integration
TRAINER = "nnUNetTrainerPlugin"
POOL_SIZE = 7


@pytest.fixture(scope="module")
def model(nnunet_dataset, tmp_path_factory):
    """A model trained on fold 0's 3 labeled cases (1 epoch x 2 iterations), with a private preprocessed copy."""
    root = tmp_path_factory.mktemp("active")
    preprocessed = nnunet_dataset.copy_preprocessed(root)
    env = nnunet_dataset.env(nnUNet_results=root / "results", nnUNet_preprocessed=preprocessed)
    run_cli(["nnUNetv2_sss_make_splits", "-d", nnunet_dataset.dataset_id, "--num-labeled", 3, "--force"], env)
    run_cli(["nnUNetv2_train", nnunet_dataset.dataset_id, "2d", 0, "-tr", TRAINER, "-device", "cpu"], env)
    return root, preprocessed, env


def pool_of(preprocessed, dataset):
    """``case -> preprocessed folder`` of fold 0's unlabeled pool."""
    from nnunetv2_sss.data.unlabeled_pool import unlabeled_sources
    return {case: folder for folder, cases in unlabeled_sources(str(preprocessed / dataset.dataset_name),
                                                                "nnUNetPlans_2d", [0]) for case in cases}


def suggest_command(dataset, strategy, n, *extra):
    return ["nnUNetv2_sss_suggest", "-d", dataset.dataset_id, "-c", "2d", "-tr", TRAINER, "-f", 0, "-n", n,
            "--strategy", strategy, "-device", "cpu", *extra]


def in_process(monkeypatch, env, main, argv, capsys=None, *needles):
    """``main(argv)`` (``argv`` without the command's name, as run_cli's lists have it) with ``env`` as the
    environment; with ``needles``: it must stop with one ``ERROR:`` line holding each of them (exit code 2),
    returned."""
    argv = argv[1:] if str(argv[0]).startswith("nnUNetv2_") else argv
    for key in [k for k in os.environ if k.startswith(("nnUNet_", "nnunet_"))]:
        monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, str(value))
    if not needles:
        return main([str(a) for a in argv])
    capsys.readouterr()
    with pytest.raises(SystemExit) as stop:
        main([str(a) for a in argv])
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("ERROR: ")]
    assert stop.value.code == 2 and len(errors) == 1, errors
    for needle in needles:
        assert needle in errors[0], errors[0]
    return errors[0]


def read_csv(path):
    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.fixture(scope="module")
def predicted(nnunet_dataset, model, tmp_path_factory):
    """``nnUNetv2_predict --save_probabilities`` (mirroring on, as the suggestions) of the pool's raw scans."""
    root, preprocessed, env = model
    raw = nnunet_dataset.raw / nnunet_dataset.dataset_name
    inputs, outputs = tmp_path_factory.mktemp("pool_images"), tmp_path_factory.mktemp("pool_predictions")
    for case in pool_of(preprocessed, nnunet_dataset):
        source = next(p for p in (raw / "imagesUnlabeled", raw / "imagesTr") if (p / f"{case}_0000.nii.gz").exists())
        os.symlink(source / f"{case}_0000.nii.gz", inputs / f"{case}_0000.nii.gz")
    run_cli(["nnUNetv2_predict", "-i", inputs, "-o", outputs, "-d", nnunet_dataset.dataset_id, "-c", "2d", "-f", 0,
             "-tr", TRAINER, "-device", "cpu", "--save_probabilities", "-npp", 0, "-nps", 0], env)
    return outputs


@pytest.fixture(scope="module")
def entropy_run(nnunet_dataset, model):
    """``nnUNetv2_sss_suggest --strategy entropy`` of the whole pool."""
    root, preprocessed, env = model
    output = root / "entropy"
    result = run_cli(suggest_command(nnunet_dataset, "entropy", POOL_SIZE, "-o", output), env)
    return output, result


def records_from_probabilities(nnunet_dataset, preprocessed, predicted, strategy):
    """Each pool scan's record from ``nnUNetv2_predict``'s probabilities, by the strategy's own scoring."""
    from nnunetv2_sss.active.members import CasePrediction
    from nnunetv2_sss.active.scoring import score_case, voxel_volume_ml
    from nnunetv2_sss.trained_model import load_preprocessed_case
    records = {}
    for case, folder in pool_of(preprocessed, nnunet_dataset).items():
        probabilities = np.load(predicted / f"{case}.npz")["probabilities"]
        image, properties = load_preprocessed_case(folder, case)
        assert probabilities.shape[1:] == image.shape[1:]  # the tiny 2d plans keep the scans' geometry
        records[case] = score_case(case, CasePrediction(probabilities), image, strategy, "top-k", 0.01,
                                   voxel_volume_ml(properties, [0, 1, 2], [1.0, 1.0]))
    return records


def test_entropy_suggestion_is_the_strategy_on_nnunet_predict_probabilities(nnunet_dataset, model, predicted,
                                                                            entropy_run):
    from nnunetv2_sss.active import strategies
    from nnunetv2_sss.active.records import read_record
    root, preprocessed, env = model
    output, result = entropy_run
    rows = read_csv(output / "suggestions.csv")
    strategy = strategies.get("entropy")
    records = records_from_probabilities(nnunet_dataset, preprocessed, predicted, strategy)
    ranked = strategy.rank(sorted(records), records, POOL_SIZE, np.random.default_rng(0))
    assert [row["case"] for row in rows] == [case for case, _ in ranked]
    for row, (case, score) in zip(rows, ranked):
        ours = read_record(str(output / "cases"), case)  # to the last bit, as the command stored them
        assert ours.uncertainty == score and np.array_equal(ours.foreground_voxels, records[case].foreground_voxels)
        assert float(row["score"]) == pytest.approx(score, rel=1e-5)
        volumes = [float(row["volume_ml_tissue_a"]), float(row["volume_ml_tissue_b"])]
        assert volumes == pytest.approx(records[case].volumes_ml.tolist(), abs=1e-4)
        assert (row["strategy"], row["model"], row["folds"]) == \
            ("entropy", f"{TRAINER}__nnUNetPlans__2d/checkpoint_final.pth", "0")
    assert "1 model (fold 0 network_weights) x 4 mirrored passes = 4 predictions" in result.stdout
    # outputs: a montage per suggestion, the record of the command, no temporary file
    assert sorted(p.name for p in (output / "montages").iterdir()) == \
        [f"{row['rank'].zfill(3)}_{row['case']}.png" for row in rows]
    record = json.loads((output / "command.json").read_text())
    assert record["command"].startswith("nnUNetv2_sss_suggest -d 901 -c 2d") and record["k"] == POOL_SIZE
    assert record["model"]["checkpoints_sha256"]["0"] and record["seconds_per_scan"] > 0
    assert not list(output.rglob("*.tmp"))


def test_suggestions_are_pool_scans_only(nnunet_dataset, model, entropy_run):
    root, preprocessed, env = model
    rows = read_csv(entropy_run[0] / "suggestions.csv")
    split = json.loads((preprocessed / nnunet_dataset.dataset_name / "splits_semi_supervised.json").read_text())[0]
    validation = json.loads((preprocessed / nnunet_dataset.dataset_name / "splits_final.json").read_text())[0]["val"]
    test_cases = [p.name[:-len("_0000.nii.gz")] for p in (nnunet_dataset.raw / nnunet_dataset.dataset_name /
                                                           "imagesTs").iterdir()]
    suggested = {row["case"] for row in rows}
    assert suggested == set(pool_of(preprocessed, nnunet_dataset)) and len(rows) == POOL_SIZE
    assert not suggested & set(split["labeled"] + validation + test_cases)
    assert set(split["unlabeled"]) < suggested


def test_foreground_random_is_seeded_and_the_strategy_on_nnunet_probabilities(nnunet_dataset, model, predicted,
                                                                             monkeypatch, tmp_path):
    from nnunetv2_sss.active import strategies
    from nnunetv2_sss.active.suggest import main
    root, preprocessed, env = model
    runs = {}
    for name, seed in (("a", 3), ("b", 3), ("c", 4)):  # b and c draw from a's scores (the folder's records)
        in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "foreground-random", 4, "--seed", seed,
                                                           "-o", tmp_path / "foreground"))
        runs[name] = [(row["case"], row["score"]) for row in read_csv(tmp_path / "foreground" / "suggestions.csv")]
    assert runs["a"] == runs["b"]
    strategy = strategies.get("foreground-random")
    records = records_from_probabilities(nnunet_dataset, preprocessed, predicted, strategy)
    for name, seed in (("a", 3), ("c", 4)):
        ranked = strategy.rank(sorted(records), records, 4, np.random.default_rng(seed))
        assert [case for case, _ in runs[name]] == [case for case, _ in ranked]
    # random: only the chosen scans are predicted; the same seed, the same scans
    chosen = []
    for _ in range(2):
        in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "random", 2, "--seed", 5, "-o",
                                                           tmp_path / "random"))
        chosen.append([row["case"] for row in read_csv(tmp_path / "random" / "suggestions.csv")])
    assert chosen[0] == chosen[1]
    chosen = chosen[0]
    assert sorted(p.name[:-4] for p in (tmp_path / "random" / "cases").iterdir()) == sorted(chosen)
    pool = sorted(pool_of(preprocessed, nnunet_dataset))
    assert chosen == [pool[i] for i in np.random.default_rng(5).permutation(POOL_SIZE)[:2]]
    # --hidden-only: the simulation's pool, the training cases the split hides in fold 0
    in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "random", 3, "--hidden-only", "-o",
                                                       tmp_path / "hidden"))
    hidden = json.loads((preprocessed / nnunet_dataset.dataset_name / "splits_semi_supervised.json").read_text())[0]
    assert sorted(row["case"] for row in read_csv(tmp_path / "hidden" / "suggestions.csv")) == hidden["unlabeled"]


def test_killed_suggestion_resumes_to_the_same_result(nnunet_dataset, model, entropy_run, monkeypatch, capsys,
                                                      tmp_path):
    from nnunetv2_sss.active.suggest import main
    root, preprocessed, env = model
    output = tmp_path / "killed"
    command = suggest_command(nnunet_dataset, "entropy", POOL_SIZE, "-o", output)
    done = kill_at_first_output(command, env, output / "cases", "*.npz")
    assert 1 <= done < POOL_SIZE
    assert not (output / "suggestions.csv").exists() and not (output / "montages").exists()
    capsys.readouterr()
    in_process(monkeypatch, env, main, command)  # started again (in this process: the same code, less start-up)
    assert f"{POOL_SIZE} to score ({done} already done)" in capsys.readouterr().out
    assert not list(output.rglob("*.tmp"))
    assert (output / "suggestions.csv").read_text() == (entropy_run[0] / "suggestions.csv").read_text()


def test_mutual_information_of_teacher_and_student(nnunet_dataset, model, monkeypatch, capsys, tmp_path):
    """An EMA trainer's checkpoint keeps the student beside the exported teacher: two predictions without
    mirroring. A model with one prediction is refused for mutual information."""
    from nnunetv2_sss.active.suggest import main
    root, preprocessed, env = model
    command = suggest_command(nnunet_dataset, "mutual-information", 3, "--disable-tta", "-o", tmp_path / "mi")
    in_process(monkeypatch, env, main, command, capsys, "--strategy mutual-information needs at least 2 predictions",
               "1 model (fold 0 network_weights) x 1 pass = 1 prediction")
    results = tmp_path / "results"
    shutil.copytree(root / "results", results)
    checkpoint = results / nnunet_dataset.dataset_name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0" / \
        "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    generator = torch.Generator().manual_seed(0)
    saved["student_weights"] = {k: v + 0.05 * torch.randn(v.shape, generator=generator) if v.is_floating_point() else v
                                for k, v in saved["network_weights"].items()}
    torch.save(saved, checkpoint)
    capsys.readouterr()
    in_process(monkeypatch, {**env, "nnUNet_results": results}, main, command)
    assert "2 models (fold 0 network_weights, fold 0 student_weights) x 1 pass = 2 predictions" in \
        capsys.readouterr().out
    rows = read_csv(tmp_path / "mi" / "suggestions.csv")
    assert len(rows) == 3 and all(0 < float(row["score"]) <= 1 for row in rows)
    assert [float(row["score"]) for row in rows] == sorted((float(row["score"]) for row in rows), reverse=True)


def test_refused_requests(nnunet_dataset, model, entropy_run, monkeypatch, capsys, tmp_path):
    from nnunetv2_sss.active.suggest import main
    root, preprocessed, env = model
    name = nnunet_dataset.dataset_name
    command = suggest_command(nnunet_dataset, "entropy", 2, "-o", tmp_path / "out")
    in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "entropy", POOL_SIZE + 1), capsys,
               f"-n {POOL_SIZE + 1}: choose between 1 and the {POOL_SIZE} scans of the unlabeled pool")
    in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "entropy", 0), capsys, "-n 0")
    # a model of another plans / dataset / configuration
    for index, (change, needles) in enumerate((
            (lambda p: p["configurations"]["2d"].update(spacing=[2.0, 2.0]),
             ("spacing = [2.0, 2.0]", "re-train the model")),
            (lambda p: p.update(dataset_name="Dataset902_Other"),
             ("was trained on Dataset902_Other, not Dataset901_Tiny",)))):
        results = tmp_path / f"results_{index}"
        shutil.copytree(root / "results", results)
        plans = results / name / f"{TRAINER}__nnUNetPlans__2d" / "plans.json"
        content = json.loads(plans.read_text())
        change(content)
        plans.write_text(json.dumps(content))
        in_process(monkeypatch, {**env, "nnUNet_results": results}, main, command, capsys, str(plans.parent), *needles)
    renamed = tmp_path / "results_renamed"
    shutil.copytree(root / "results" / name / f"{TRAINER}__nnUNetPlans__2d",
                    renamed / name / f"{TRAINER}__nnUNetPlans__3d_fullres")
    in_process(monkeypatch, {**env, "nnUNet_results": renamed}, main,
               [a if a != "2d" else "3d_fullres" for a in command], capsys,
               "a model of configuration '2d', not '3d_fullres'")
    in_process(monkeypatch, env, main, [a if a != TRAINER else "nnUNetTrainerMeanTeacher" for a in command], capsys,
               "has no checkpoint_final.pth for fold 0",
               "nnUNetv2_train Dataset901_Tiny 2d 0 -tr nnUNetTrainerMeanTeacher")
    # an empty pool
    empty = tmp_path / "preprocessed"
    shutil.copytree(preprocessed, empty, ignore=shutil.ignore_patterns("*_unlabeled", "splits_semi_supervised.json"))
    in_process(monkeypatch, {**env, "nnUNet_preprocessed": empty}, main, command, capsys, "needs unlabeled data",
               "nnUNetv2_sss_preprocess_unlabeled")
    # scores made with other settings
    shutil.copytree(entropy_run[0], tmp_path / "other")
    in_process(monkeypatch, env, main, suggest_command(nnunet_dataset, "entropy", 2, "--aggregate", "mean", "-o",
                                                       tmp_path / "other"), capsys,
               "holds scores made with other settings (aggregate differ)", "--clean")
    # scores made with a checkpoint that changed since
    results = tmp_path / "results_changed"
    shutil.copytree(root / "results", results)
    checkpoint = results / name / f"{TRAINER}__nnUNetPlans__2d" / "fold_0" / "checkpoint_final.pth"
    saved = torch.load(checkpoint, map_location="cpu", weights_only=False)
    saved["current_epoch"] += 1
    torch.save(saved, checkpoint)
    shutil.copytree(entropy_run[0], tmp_path / "stale")
    in_process(monkeypatch, {**env, "nnUNet_results": results}, main,
               suggest_command(nnunet_dataset, "entropy", 2, "-o", tmp_path / "stale"), capsys,
               "older than the model's checkpoint", "--clean")


# ---- the labelling step -------------------------------------------------------------------------------------
def test_new_labels_become_labeled_training_cases(nnunet_dataset, model, predicted, monkeypatch, capsys, tmp_path):
    """Labels of two imagesUnlabeled scans arrive (here: the model's segmentations, in the scans' geometry)."""
    import blosc2
    from nnunetv2_sss.active.add_labels import main
    root, preprocessed, env = model
    name = nnunet_dataset.dataset_name
    raw = tmp_path / "raw"
    shutil.copytree(nnunet_dataset.raw, raw)
    mine = tmp_path / "preprocessed"
    shutil.copytree(preprocessed, mine)
    env = {**env, "nnUNet_raw": raw, "nnUNet_preprocessed": mine}
    labels = tmp_path / "labels"
    labels.mkdir()
    for case in ("unl_008", "unl_009"):
        shutil.copy(predicted / f"{case}.nii.gz", labels / f"{case}.nii.gz")
    # refused before anything changes: a label of a labeled case, of another size, with a foreign value
    import SimpleITK as sitk
    bad = tmp_path / "bad"
    bad.mkdir()
    image = sitk.ReadImage(str(predicted / "unl_010.nii.gz"))
    shutil.copy(predicted / "unl_010.nii.gz", bad / "tiny_001.nii.gz")
    in_process(monkeypatch, env, main, ["-d", 901, "-i", bad], capsys, "tiny_001 is a labeled case already")
    os.remove(bad / "tiny_001.nii.gz")
    sitk.WriteImage(sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[:, :40]), str(bad / "unl_010.nii.gz"))
    in_process(monkeypatch, env, main, ["-d", 901, "-i", bad], capsys, "unl_010.nii.gz: size [48, 40, 14] differs")
    values = sitk.GetArrayFromImage(image)
    values[0, 0, 0] = 7
    foreign = sitk.GetImageFromArray(values)
    foreign.CopyInformation(image)
    sitk.WriteImage(foreign, str(bad / "unl_010.nii.gz"))
    in_process(monkeypatch, env, main, ["-d", 901, "-i", bad], capsys, "holds the values [7]")
    assert (raw / name / "imagesUnlabeled" / "unl_010_0000.nii.gz").exists()

    before = json.loads((mine / name / "splits_final.json").read_text())
    run_cli(["nnUNetv2_sss_add_labels", "-d", 901, "-i", labels], env)
    for case in ("unl_008", "unl_009"):
        assert (raw / name / "imagesTr" / f"{case}_0000.nii.gz").exists()
        assert not (raw / name / "imagesUnlabeled" / f"{case}_0000.nii.gz").exists()
        assert (raw / name / "labelsTr" / f"{case}.nii.gz").read_bytes() == (labels / f"{case}.nii.gz").read_bytes()
        assert (mine / name / "gt_segmentations" / f"{case}.nii.gz").exists()
        assert not (mine / name / "nnUNetPlans_2d_unlabeled" / f"{case}.pkl").exists()
        assert (mine / name / "nnUNetPlans_3d_fullres" / f"{case}.pkl").exists()
    assert json.loads((raw / name / "dataset.json").read_text())["numTraining"] == 10
    assert json.loads((mine / name / "dataset.json").read_text())["numTraining"] == 10
    after = json.loads((mine / name / "splits_final.json").read_text())
    semi = json.loads((mine / name / "splits_semi_supervised.json").read_text())
    for fold in range(5):
        assert after[fold]["val"] == before[fold]["val"]
        assert {"unl_008", "unl_009"} <= set(after[fold]["train"]) & set(semi[fold]["labeled"])
    assert sorted(pool_of(mine, nnunet_dataset)) == sorted(set(pool_of(preprocessed, nnunet_dataset)) -
                                                           {"unl_008", "unl_009"})
    # the same command again completes (nothing left to do) and changes nothing
    capsys.readouterr()
    in_process(monkeypatch, env, main, ["-d", 901, "-i", labels])
    assert "training cases of every fold already" in capsys.readouterr().out
    assert json.loads((mine / name / "splits_final.json").read_text()) == after
    # preprocessed as nnUNetv2_preprocess preprocesses them
    theirs = tmp_path / "theirs"
    shutil.copytree(mine, theirs)
    run_cli(["nnUNetv2_preprocess", "-d", 901, "-c", "2d", "-np", 1], {**env, "nnUNet_preprocessed": theirs,
                                                                       "nnUNet_n_proc_DA": "1"})
    for case in ("unl_008", "unl_009"):
        for suffix in ("", "_seg"):
            ours, reference = (np.asarray(blosc2.open(str(root_ / name / "nnUNetPlans_2d" / f"{case}{suffix}.b2nd"),
                                                      mode="r")) for root_ in (mine, theirs))
            assert np.array_equal(ours, reference), (case, suffix)
    # a hidden training case of fold 0 revealed there
    hidden = semi[0]["unlabeled"][0]
    in_process(monkeypatch, env, main, ["-d", 901, "--reveal", hidden, "-f", 0])
    revealed = json.loads((mine / name / "splits_semi_supervised.json").read_text())
    assert hidden in revealed[0]["labeled"] and hidden not in revealed[0]["unlabeled"]
    assert revealed[1:] == semi[1:]
