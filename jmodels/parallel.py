"""Data-parallel training over MPI processes, Jittor's own engine: `mpirun -np N python train_ldm.py`.

Each rank reads its slice of the global batch (dataset.BatchLoader), Jittor's optimizer averages
the gradients over ranks (`jittor.optim.Optimizer.backward`) and BatchNorm averages its statistics.
What this module adds: every random draw of a step is made for the whole global batch from a seed
shared by all ranks and then sliced, and the weights start from rank 0's, so N processes compute
what one process computes, up to the order of fp32 sums. Rank 0 alone writes files, inside
`jt.single_process_scope` (Jittor calls in a bare rank-0 branch can deadlock). Outside mpirun every
function here is the one-process identity.
Ref: ../shared/JITTOR.md (multi-GPU); Goyal et al. 2017 (large-batch data parallelism).
"""
import os

import jittor as jt
import numpy as np

from .atomic import LineLog


def is_main():
    return jt.rank == 0


def local(n_local):
    """This rank's slice of a global batch whose per-rank part has `n_local` items."""
    return slice(jt.rank * n_local, (jt.rank + 1) * n_local)


def randn(local_shape):
    """Standard normal noise for this rank's part of the global batch: drawn for all ranks at once
    (shape (world_size * B, ...)) so the values do not depend on the number of processes."""
    b = local_shape[0]
    return jt.randn((jt.world_size * b,) + tuple(local_shape[1:]))[local(b)]


def seed_step(seed):
    """Seed Jittor's, numpy's and Python's generators alike on every rank (Jittor's default offsets
    them by rank): the step's draws are global and sliced by `randn` and `local`."""
    jt.set_global_seed(seed, different_seed_for_mpi=False)


def mean_over_ranks(x):
    """A Var averaged over the ranks (identity in one process)."""
    return x.mpi_all_reduce("mean") if jt.in_mpi else x


def average(stats):
    """A dict of floats averaged over the ranks in one all-reduce; unchanged in one process."""
    if not jt.in_mpi:
        return stats
    keys = sorted(stats)
    mean = jt.array(np.array([stats[k] for k in keys], np.float64)).mpi_all_reduce("mean").numpy()
    return {k: float(v) for k, v in zip(keys, mean)}


def start_equal(*modules):
    """Rank 0's weights to every rank before the first forward. Jittor's optimizer broadcasts only
    after the first gradients, which were then computed from each rank's own random init."""
    if jt.in_mpi:
        for m in modules:
            m.mpi_param_broadcast(0)
        jt.sync_all()


def barrier():
    if jt.in_mpi:
        jt.mpi.mpi_barrier()


def on_main(fn):
    """Run `fn(*args)` on rank 0 only (with MPI off inside), then wait for it on every rank;
    returns fn's result on rank 0 and None elsewhere."""
    def run(*args, **kw):
        result = jt.single_process_scope(0)(fn)(*args, **kw)
        barrier()
        return result
    return run


def print0(*args, **kw):
    if is_main():
        print(*args, **kw)


def open_log(path):
    """The run's log, opened for appending whole lines on rank 0 (a full disk raises WriteError and leaves no
    half line: jmodels.atomic.LineLog); a sink on the other ranks."""
    if not is_main():
        return open(os.devnull, "w")
    path.parent.mkdir(parents=True, exist_ok=True)
    return LineLog(path)
