"""Data-parallel AdaHessian: two gloo processes on loopback."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn

from adahessian import AdaHessian

WORKER = Path(__file__).with_name("dist_worker.py")

pytestmark = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)


def test_ranks_stay_identical_across_hessian_and_plain_steps(two_ranks):
    r0, r1 = two_ranks(WORKER, "sync")
    assert r0 is not None and r1 is not None
    assert r0["params"] == r1["params"], "every rank must apply the same update"
    assert r0["buffers"] == r1["buffers"], "average_buffers makes BatchNorm statistics agree"
    assert "process_group=dist.group.WORLD" in r0["warning"]


def test_shared_probes_two_ranks_equal_one_process_with_double_batch(two_ranks):
    r0, r1 = two_ranks(WORKER, "shared")
    assert r0 is not None and r1 is not None
    assert r0["params"] == r1["params"]

    sys.path.insert(0, str(WORKER.parent))
    try:
        import dist_worker
    finally:
        sys.path.remove(str(WORKER.parent))
    model = dist_worker.make_model(seed=0)  # rank 0's model, which broadcast_module spread
    model.eval()
    opt = AdaHessian(model.parameters(), lr=0.05, update_interval=2, n_samples=2, seed=11)
    dist_worker.train(model, opt, dist_worker.data(5, 16))
    single = torch.cat([p.detach().flatten() for p in model.parameters()])
    torch.testing.assert_close(torch.tensor(r0["params"], dtype=torch.float64), single,
                               rtol=1e-10, atol=1e-12)  # fmt: skip
    assert not torch.allclose(single, torch.cat([p.detach().flatten() for p in
                              dist_worker.make_model(seed=0).parameters()]))  # fmt: skip


def test_a_failed_rank_does_not_leave_the_other_hanging(two_ranks):
    r0, r1 = two_ranks(WORKER, "error", must_succeed=False)
    assert r1 is None
    assert r0 is not None and "error" in r0, r0


def test_unwrap_returns_the_module_inside_a_wrapper():
    from adahessian.distributed import unwrap

    inner = nn.Linear(2, 2)
    assert unwrap(nn.DataParallel(inner)) is inner
    assert unwrap(inner) is inner


def test_sharded_parameters_are_rejected_with_advice():
    p = nn.Parameter(torch.ones(3))
    p._is_flat_param = True  # what FSDP's FlatParameter carries
    with pytest.raises(ValueError, match="process_group"):
        AdaHessian([p])


def test_example_runs_under_torchrun():
    example = Path(__file__).parents[2] / "examples" / "distributed.py"
    pytest.importorskip("sklearn")
    out = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(example)],
        env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-2000:]
    # torchrun relays both ranks' output: their lines may arrive glued together.
    sums = dict(re.findall(r"rank (\d)/2: parameter checksum (-?\d+\.\d{12})", out.stdout))
    assert sorted(sums) == ["0", "1"] and sums["0"] == sums["1"], out.stdout
