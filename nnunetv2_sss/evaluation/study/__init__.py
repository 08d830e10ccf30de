"""``nnUNetv2_sss_study``: does learning from unlabeled scans beat supervised nnU-Net here?

    nnUNetv2_sss_study -d D -c 2d --num-labeled 2 4 8 --seeds 3 \\
        -tr nnUNetTrainerPlugin nnUNetTrainerMeanTeacher nnUNetTrainerUniMatchV2 nnUNetTrainerSSS \\
        [--epochs E --iterations I --val-iterations V] [-device cpu|cuda] [-o OUT] [--no-ceiling] [--max-runs K]
        [--executor local [--jobs N --gpus 0,1,...] | --executor slurm [--partition P --time-limit T ... --no-wait]]
        [--active-learning S ... --budget K --al-rounds R]

For every seed and labeled count N (a *group*): ``nnUNetv2_sss_make_splits --num-labeled N --seed S``
(so the labeled cases differ between seeds), then every trainer on that split, fold 0, through
nnU-Net's own ``nnUNetv2_train`` and ``nnUNetv2_predict`` with ``nnUNet_sss_seed=S``, then the
plugin's evaluation (:func:`nnunetv2_sss.evaluation.evaluate.evaluate_folders`) on the dataset's
held-out cases (``imagesTs`` + ``labelsTs``; without them on fold 0's validation cases, which the
output says). The *ceiling* is the supervised trainer with every training case of fold 0 labeled
(``--num-labeled all``, ``--labeled-fraction 1``), one run per seed.

Each group has its own folder ``OUT/runs/n{N}_s{S}/`` (``nall_s{S}`` for the ceiling) with its own
``nnUNet_results`` and its own view of the preprocessed dataset: ``nnUNet_preprocessed/<dataset>/``
holds symbolic links to the shared preprocessed data (plans, ``nnUNetPlans_2d``, ``..._unlabeled``,
...) next to the group's own ``splits_final.json`` / ``splits_semi_supervised.json``. Runs of
different splits never overwrite each other's models or splits, and the dataset's own split file
in ``nnUNet_preprocessed`` is never touched. The split files are written again whenever a group
starts (deterministic for the seed), and every row records the labeled cases it was trained on.

Active learning (``--active-learning``, ``active_rounds.py``): from each seed's split of the smallest count,
every row and strategy queries ``--budget`` hidden training cases per round with its previous round's model
(round 0: its ordinary row), reveals them and trains again from scratch, ``--al-rounds`` times; each round a
run in a group of its own whose split is rebuilt from the seed and the earlier rounds' ``suggestions.csv``.

Jobs (``jobs.py``): one per run (train, predict, evaluate, done marker), one per trainer of ``--pretrained``
(its pretraining, before the trainer's pretrained rows), a self-training student after its teacher's run, an
active-learning round after the row's previous round. An
executor runs them (docs/cluster.md): ``--executor local`` (default) with ``--jobs N`` at once on ``--gpus``
(``--jobs 1``: one after the other in this process, as the study always ran), or ``--executor slurm``, a SLURM
job each through submitit, with SLURM's dependencies, requeued jobs continuing from their checkpoint and
``--no-wait``; the same command again reports the jobs and resubmits only the failed or lost ones.

Resuming: a run is complete when its marker ``OUT/runs/<group>/done/<trainer>.json`` exists; it
is written atomically (temporary file, then rename) after the evaluation and holds the run's row.
A run without marker is redone from scratch (its results, predictions and logs are deleted
first), so a study killed at any point continues where it stopped when started again and never
counts a half-written run (a SLURM job that SLURM requeued continues its training from its checkpoint
instead). Local child processes die with the study (``PR_SET_PDEATHSIG`` on Linux).
``OUT/study.json`` keeps the settings that must not change between restarts (dataset,
configuration, plans, fold, schedule); another value stops the study with an error.

One study per output folder: a second one started on ``OUT`` stops at once, naming the first
(``OUT/.study.lock``, :mod:`nnunetv2_sss.data.folder_lock`).

Outputs (rewritten after every run, atomically): ``runs.csv`` (one row per completed run),
``summary.md`` and ``learning_curve.png`` (with ``--active-learning`` also ``active_learning.png``).

Modules: ``command`` (options, executor, entry point), ``runner`` (:class:`~.runner.Study`: checks, one run,
one pretraining, outputs), ``jobs`` (the graph), ``coordinator`` (lock, order, the loop), ``progress``
(progress lines, time left), ``executor`` (the interface, the local executor), ``job_process`` (a job in a
process of its own), ``slurm`` / ``slurm_options`` / ``slurm_job`` / ``job_files`` (the SLURM executor, its
options, the job on the node, the files jobs share with the coordinator), ``resources`` (memory and CPUs a
job asks for), ``shared_paths`` (paths jobs on other nodes can use), ``plan`` (runs and groups), ``trainers``
(``-tr`` names to classes), ``inputs`` (dataset checks), ``environment`` (children's environment,
``study.json``), ``workspace`` (folders, split views, done markers), ``processes`` (child processes),
``rows`` (``runs.csv``), ``summary`` (``summary.md``), ``plot`` (``learning_curve.png``), ``active_rounds`` (an
active-learning round's split and query), ``active_summary`` / ``active_plot`` (its tables, ``active_learning.png``);
the statistics are
:mod:`nnunetv2_sss.evaluation.statistics`.
"""
