"""One rank of the CPU multi-GPU check (``tests/test_ddp.py``): the real trainer classes under
DistributedDataParallel on the gloo backend.

    python tests/ddp_worker.py --rank R --world-size 2 --init FILE --out OUT.json --trainers T1 T2 ... [-d 901]

Per trainer: the class nnU-Net finds by name, in a test-only subclass that keeps ``device = cpu``
(nnU-Net's ``__init__`` switches to CUDA under DDP); ``on_train_start`` (the base wraps the
network in DDP without ``device_ids``), then ``steps`` calls of the real ``train_step``. In the
step ``checked_step`` every trained parameter's local gradient (what this rank's backward
computed, before DDP averages it) is recorded by a tensor hook, and the gradient the optimiser
receives by an optimiser step pre-hook; the ranks gather the local gradients and compare their
mean, clipped as the trainer clips, with what the optimiser got. After the last step the ranks
compare checksums of student, teacher and CPS's second network, and of the batches they drew.
Writes ``{trainer: {...}}`` (rank 0 with the comparisons).
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import trainer_harness  # noqa: E402
from plugin_trainers import trainer_models  # noqa: E402


def cpu_trainer_class(name: str):
    """The trainer ``name`` in a test-only subclass that keeps the CPU under DDP."""
    import torch
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    cls = recursive_find_trainer_class_by_name(name)  # as nnUNetv2_train finds it (nnUNet_extTrainer)
    assert cls is not None and issubclass(cls, nnUNetTrainer), name

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device('cpu')):  # nnU-Net records these arguments by name
        cls.__init__(self, plans, configuration, fold, dataset_json, device)
        self.device = torch.device('cpu')
        self.grad_scaler = None

    # the teacher checksum across ranks after every step (default: every 50 iterations)
    return type(name, (cls,), {'__init__': __init__, 'replica_check_every': 1})


def build(name: str, dataset: str):
    import torch
    from batchgenerators.utilities.file_and_folder_operations import join, load_json
    from nnunetv2.paths import nnUNet_preprocessed
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    folder = join(nnUNet_preprocessed.get(), maybe_convert_to_dataset_name(dataset))
    plans = dict(load_json(join(folder, 'nnUNetPlans.json')), continue_training=False)
    return cpu_trainer_class(name)(plans, '2d', 0, load_json(join(folder, 'dataset.json')), torch.device('cpu'))


def trained_modules(trainer):
    """(name, DDP-wrapped module) of every network the optimiser trains."""
    objective = getattr(trainer, 'ssl_objective', None)
    return [('student', trainer.network)] + (list(objective.trained_modules.items()) if objective else [])


def gathered(tensor):
    import torch
    import torch.distributed as dist
    out = [torch.zeros_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(out, tensor.contiguous())
    return out


def checked_step(trainer, batch) -> dict:
    """One real ``train_step``; returns the largest difference between the gradient the optimiser
    got and the mean of the ranks' local gradients (clipped as the trainer clips), per module."""
    import torch
    modules = trained_modules(trainer)
    parameters = {name: [p for p in module.parameters() if p.requires_grad] for name, module in modules}
    local = {name: [None] * len(ps) for name, ps in parameters.items()}
    handles = []
    for name, ps in parameters.items():
        for i, p in enumerate(ps):
            def keep(grad, name=name, i=i):
                local[name][i] = grad.detach().clone() if local[name][i] is None else local[name][i] + grad.detach()
            handles.append(p.register_hook(keep))
    received = {}

    def record(optimizer, args, kwargs):
        for name, ps in parameters.items():
            received[name] = [p.grad.detach().clone() if p.grad is not None else None for p in ps]
    handles.append(trainer.optimizer.register_step_pre_hook(record))
    try:
        trainer.train_step(batch)
    finally:
        for handle in handles:
            handle.remove()
    differences = {}
    clip = getattr(trainer, 'gradient_clip_norm', 12.0)
    for name, ps in parameters.items():
        missing = [i for i, g in enumerate(local[name]) if g is None]
        flat_local = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten()
                                for g, p in zip(local[name], ps)])
        mean = torch.stack(gathered(flat_local)).mean(0)
        expected = mean * min(1.0, clip / (float(mean.norm()) + 1e-6))
        got = torch.cat([(g if g is not None else torch.zeros_like(p)).flatten() for g, p in zip(received[name], ps)])
        differences[name] = {'max_abs_difference': float((got - expected).abs().max()),
                             'scale': float(expected.abs().max()), 'parameters_without_local_gradient': len(missing),
                             'differs_from_local': float((got - flat_local).abs().max())}
    return differences


def run(name: str, dataset: str, steps: int, checked: int) -> dict:
    import torch
    from nnunetv2_sss.training.ddp import parameter_checksum
    trainer = build(name, dataset)
    started = time.perf_counter()
    try:
        trainer.on_train_start()
        trainer.on_epoch_start()
        trainer.on_train_epoch_start()
        assert isinstance(trainer.network, torch.nn.parallel.DistributedDataParallel), type(trainer.network)
        result = {'batch_size': trainer.batch_size}
        batch_sums = []
        for step in range(steps):
            batch = next(trainer.dataloader_train)
            sums = [float(batch['data'].double().sum())]
            if getattr(trainer, 'dataloader_unlabeled', None) is not None:
                batch['unlabeled'] = next(trainer.dataloader_unlabeled)
                sums.append(float(batch['unlabeled']['data'].double().sum()))
                result['unlabeled_batch_size'] = int(batch['unlabeled']['data'].shape[0])
            batch_sums.append(sums)
            if step == checked:
                result['gradients'] = checked_step(trainer, batch)
            else:
                trainer.train_step(batch)
        models = trainer_models(trainer)
        result['checksums'] = {k: [c.tolist() for c in gathered(parameter_checksum(m))] for k, m in models.items()}
        result['batch_sums'] = [s.tolist() for s in gathered(torch.tensor(batch_sums, dtype=torch.float64))]
        result['seconds'] = round(time.perf_counter() - started, 2)
        return result
    finally:
        trainer_harness._finish_loaders(trainer)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument('--rank', type=int, required=True)
    parser.add_argument('--world-size', type=int, default=2)
    parser.add_argument('--init', required=True, help='file for init_process_group(init_method=file://...)')
    parser.add_argument('--out', required=True)
    parser.add_argument('--trainers', nargs='+', required=True)
    parser.add_argument('--steps', type=int, default=3)
    parser.add_argument('--checked-step', type=int, default=1)
    parser.add_argument('-d', '--dataset', default='901')
    args = parser.parse_args()
    trainer_harness.configure(steps=args.steps, threads=1)
    import torch.distributed as dist
    dist.init_process_group('gloo', init_method=f'file://{args.init}', rank=args.rank, world_size=args.world_size)
    results = {}
    with contextlib.redirect_stdout(sys.stderr):
        for name in args.trainers:
            if name == 'nnUNetTrainerCPS4':
                if args.rank == 0:
                    trainer_harness.prepare_cps4_stage1(args.dataset, '2d', 0, 0)
                dist.barrier()
            results[name] = run(name, args.dataset, args.steps, args.checked_step)
            gc.collect()  # the trainer's DDP wrappers (and their references to the process group) go now
            print(f"[rank {args.rank}] {name}: {results[name]['seconds']} s", flush=True)
    pathlib.Path(args.out).write_text(json.dumps(results, indent=1))
    # both ranks leave their last collective before either tears the group down (a rank that destroys
    # it while its peer is still inside one aborts with "terminate called without an active exception")
    dist.barrier()
    dist.destroy_process_group()
    # and no gloo thread outlives the interpreter: leave without its finalisation, which aborted a rank
    # ("terminate called without an active exception", SIGABRT) after everything above had succeeded
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


if __name__ == '__main__':
    main()
