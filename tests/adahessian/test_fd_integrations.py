"""``AdaHessian(hvp="finite-difference")`` where double backward is not available: frameworks that
drive ``opt.step(closure)`` themselves (Lightning, the HF Trainer), torch.compile, fused SDPA and
activation checkpointing, mixed precision, DDP and FSDP2. Each test compares with an exact or
strong reference (a plain closure loop, double backward, one process with the whole batch)."""

from __future__ import annotations

import copy
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from torch import nn
from torch.nn import functional as F

from adahessian import AdaHessian, finite_difference_diagonal, hutchinson_diagonal, rademacher

HERE = Path(__file__).parent
ROOT = HERE.parents[1]
WORKER = HERE / "fd_dist_worker.py"
F64 = torch.float64

needs_gloo = pytest.mark.skipif(
    not dist.is_available() or not dist.is_gloo_available(), reason="needs torch.distributed gloo"
)


def closure_for(opt, model, x, y, loss_fn=F.cross_entropy):
    """torch.optim's ordinary closure: no create_graph anywhere."""

    def closure():
        opt.zero_grad()
        loss = loss_fn(model(x), y)
        loss.backward()
        return loss

    return closure


def tiny_loader(n: int = 64, batch: int = 16) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(0)
    data = torch.utils.data.TensorDataset(
        torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g)
    )
    return torch.utils.data.DataLoader(data, batch_size=batch, shuffle=False)


def tiny_net(kink: bool = False) -> nn.Module:
    """Tanh, or ReLU and LeakyReLU (kinks whose pattern the perturbed passes keep)."""
    torch.manual_seed(0)
    if kink:
        return nn.Sequential(
            nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3), nn.LeakyReLU(0.1), nn.Linear(3, 3)
        )
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


# ----------------------------------------------------------------------------- 1. Lightning


def test_lightning_automatic_optimisation_equals_a_plain_closure_loop():
    L = pytest.importorskip("lightning", reason="needs PyTorch Lightning")

    class Module(L.LightningModule):
        def __init__(self, net: nn.Module) -> None:
            super().__init__()
            self.net = net
            self.training_steps = 0

        def training_step(self, batch, batch_idx):
            self.training_steps += 1
            x, y = batch
            return F.cross_entropy(self.net(x), y)

        def configure_optimizers(self):
            return AdaHessian(
                self.parameters(), lr=0.1, update_interval=2, seed=0, hvp="finite-difference"
            )

    loader = tiny_loader()
    module = Module(tiny_net(kink=True))
    # Automatic optimisation: Lightning wraps training_step + zero_grad + backward in a closure and
    # calls optimizer.step(closure); the optimizer calls it again at θ + εv. Keep Lightning's
    # gradient clipping off (gradient_clip_val=None): it clips inside that closure, after every
    # backward, so g(θ + εv) and g(θ) would be rescaled by different norms and their difference
    # would no longer be a Hessian-vector product (and the curvature would not be clipped with
    # the gradient).
    trainer = L.Trainer(
        max_steps=4,
        accelerator="cpu",
        precision="32-true",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    opt = module.optimizers().optimizer
    extra = opt.state_dict()["adahessian"]
    assert extra["steps"] == 4 and extra["hessian_updates"] == 2
    assert module.training_steps == 4 + 2  # one perturbed pass per Hessian step

    plain = tiny_net(kink=True)
    plain_opt = AdaHessian(
        plain.parameters(), lr=0.1, update_interval=2, seed=0, hvp="finite-difference"
    )
    for x, y in loader:
        plain_opt.step(closure_for(plain_opt, plain, x, y))
    for p, q in zip(module.net.parameters(), plain.parameters(), strict=True):
        assert torch.equal(p, q)
    assert not torch.equal(next(plain.parameters()), next(tiny_net(kink=True).parameters()))


# ----------------------------------------------------------------------------- 2. HF Trainer


def tiny_bert(transformers, **overrides):
    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=32,
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=16,
        num_labels=2,
        **overrides,
    )  # (no attn_implementation: the default, sdpa)
    return transformers.BertForSequenceClassification(config)


def test_hf_trainer_recipe_with_sdpa_attention_equals_a_plain_closure_loop(tmp_path):
    transformers = pytest.importorskip("transformers", reason="the recipe needs transformers")
    pytest.importorskip("accelerate", reason="the HF Trainer needs accelerate")
    sys.path.insert(0, str(ROOT / "examples" / "recipes"))
    try:
        import hf_trainer_fd
    finally:
        sys.path.remove(str(ROOT / "examples" / "recipes"))

    class SequentialTrainer(hf_trainer_fd.FiniteDifferenceTrainer):
        def _get_train_sampler(self, train_dataset=None):  # the plain loop's batch order
            return torch.utils.data.SequentialSampler(train_dataset or self.train_dataset)

    # No dropout, so that the Trainer's random stream and the plain loop's need not agree; ReLU in
    # the feed-forward layers, whose pattern the perturbed passes keep.
    no_dropout = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="relu")
    model = tiny_bert(transformers, **no_dropout)
    assert model.config._attn_implementation == "sdpa"
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 32, (32, 8), generator=g)
    data = [{"input_ids": i, "labels": (i[0] > 16).long()} for i in ids]

    def make_opt(m: nn.Module) -> AdaHessian:
        return AdaHessian(
            m.parameters(), lr=0.05, update_interval=2, seed=0, hvp="finite-difference"
        )

    opt = make_opt(model)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        max_steps=4,
        per_device_train_batch_size=8,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = SequentialTrainer(
        model=model,
        args=args,
        train_dataset=data,
        optimizers=(opt, hf_trainer_fd.constant_schedule(opt)),
    )
    trainer.train()
    extra = opt.state_dict()["adahessian"]
    assert extra["steps"] == 4 and extra["hessian_updates"] == 2
    assert opt.skipped_steps == 0
    assert all(torch.isfinite(s["exp_hessian_diag_sq"]).all() for s in opt.state.values())
    assert all(s["exp_hessian_diag_sq"].abs().sum() > 0 for s in opt.state.values())

    plain = tiny_bert(transformers, **no_dropout)
    plain_opt = make_opt(plain)
    plain.train()
    for start in range(0, 32, 8):
        batch = {
            "input_ids": ids[start : start + 8],
            "labels": torch.stack([d["labels"] for d in data[start : start + 8]]),
        }

        def closure(batch=batch):
            plain_opt.zero_grad()
            loss = plain(**batch).loss
            loss.backward()
            return loss

        plain_opt.step(closure)
    for (name, p), q in zip(model.named_parameters(), plain.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7, msg=name)
    before = tiny_bert(transformers, **no_dropout)
    assert any(
        not torch.equal(p, b) for p, b in zip(model.parameters(), before.parameters(), strict=True)
    )


# ----------------------------------------------------------------------------- 3. torch.compile


def test_torch_compile_inductor_no_recompiles_and_close_to_eager():
    """A compiled model with BatchNorm, ReLU and max pooling: the first Hessian step compiles the
    graph that records the pattern and the one that replays it, the first plain step its own
    graph; after that no graph is compiled and nothing breaks the graph."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    # float64: the quotient divides the rounding differences of inductor's fused kernels by ε
    # (1e-3 in float32, whose 1e-7 rounding then makes the runs drift apart by percents).
    eager = nn.Sequential(
        nn.Conv1d(1, 4, 3), nn.BatchNorm1d(4), nn.ReLU(), nn.MaxPool1d(2), nn.Flatten(),
        nn.Tanh(), nn.Linear(12, 3),
    ).to(F64)  # fmt: skip
    model = copy.deepcopy(eager)
    g = torch.Generator().manual_seed(1)
    batches = [
        (torch.randn(16, 1, 8, generator=g, dtype=F64), torch.randint(0, 3, (16,), generator=g))
        for _ in range(6)
    ]

    def run(net, compiled: bool) -> tuple[AdaHessian, list[int]]:
        opt = AdaHessian(
            net.parameters(), lr=0.05, seed=0, update_interval=2, hvp="finite-difference"
        )
        fn = torch.compile(net, backend="inductor") if compiled else net
        graphs = []
        for x, y in batches:  # Hessian steps 1, 3, 5 (three passes each); plain steps 2, 4, 6
            opt.step(closure_for(opt, fn, x, y))
            graphs.append(counters["stats"]["unique_graphs"])
        return opt, graphs

    torch._dynamo.reset()
    counters.clear()
    opt, graphs = run(model, compiled=True)
    assert graphs[0] == 2, "the first Hessian step compiles the recording and replaying graphs"
    assert graphs[1:] == [3] * 5, f"graphs compiled after the first two steps: {graphs}"
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert not counters["recompiles"], dict(counters["recompiles"])
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 3
    torch._dynamo.reset()

    run(eager, compiled=False)
    for p, q in zip(model.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-7, atol=1e-9)
    for b, c in zip(model.buffers(), eager.buffers(), strict=True):  # one forward per step
        torch.testing.assert_close(b, c, rtol=1e-9, atol=1e-12)


# ----------------------------------------------------------------------------- 4. SDPA, checkpoint


class AttentionBlock(nn.Module):
    """Causal self-attention through F.scaled_dot_product_attention, then a ReLU MLP under
    non-reentrant activation checkpointing (its recomputation keeps the first pass's pattern)."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(8, 24)
        self.proj = nn.Linear(8, 8)
        self.mlp = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 8))
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, 2, 4).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        h = x + self.proj(a.transpose(1, 2).reshape(b, t, 8))
        h = h + torch.utils.checkpoint.checkpoint(self.mlp, h, use_reentrant=False)
        return self.head(h.mean(1))


def test_fused_sdpa_and_checkpointing_estimate_equals_double_backward():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = AttentionBlock().to(F64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 5, 8, generator=g, dtype=F64)
    y = torch.randint(0, 3, (4,), generator=g)
    params = list(model.parameters())

    # The default backend on CPU is the fused flash kernel, which has no double backward.
    q = torch.randn(1, 2, 5, 4, dtype=F64)
    assert torch._fused_sdp_choice(q, q, q, None, 0.0, True) == SDPBackend.FLASH_ATTENTION.value
    grads = torch.autograd.grad(F.cross_entropy(model(x), y), params, create_graph=True)
    with pytest.raises(RuntimeError, match="not implemented"):
        hutchinson_diagonal(grads, params, generator=torch.Generator().manual_seed(5))

    def closure():
        model.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    loss, estimate = finite_difference_diagonal(
        closure, params, n_samples=2, generator=torch.Generator().manual_seed(5), eps=1e-6
    )
    with sdpa_kernel(SDPBackend.MATH):  # the reference: plain double backward
        ref_loss = F.cross_entropy(model(x), y)
        grads = torch.autograd.grad(ref_loss, params, create_graph=True)
        reference = hutchinson_diagonal(
            grads, params, n_samples=2, generator=torch.Generator().manual_seed(5)
        )
    torch.testing.assert_close(loss.detach(), ref_loss.detach(), rtol=1e-12, atol=0)
    est, ref = (
        torch.cat([e.flatten() for e in estimate]),
        torch.cat([r.flatten() for r in reference]),
    )
    assert ref.abs().max() > 1e-3
    assert (est - ref).norm() / ref.norm() < 1e-4
    torch.testing.assert_close(est, ref, rtol=1e-3, atol=1e-5 * ref.abs().max().item())


# ----------------------------------------------------------------------------- 5. mixed precision


class RecordingScaler(torch.amp.GradScaler):
    """A GradScaler that records the optimizer's (scaled) pending estimate on each step."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.estimates: list[list[torch.Tensor]] = []
        self.scales: list[float] = []

    def step(self, optimizer, *args, **kwargs):
        self.estimates.append([e.clone() for e in optimizer.hessian_estimate()])
        self.scales.append(self.get_scale())
        return super().step(optimizer, *args, **kwargs)


def amp_closure(model, x, y, dtype, scaler=None):
    def closure():
        model.zero_grad()
        with torch.autocast("cpu", dtype=dtype, enabled=dtype != torch.float32):
            loss = F.cross_entropy(model(x), y)
        (loss if scaler is None else scaler.scale(loss)).backward()
        return loss

    return closure


def amp_data():
    g = torch.Generator().manual_seed(2)
    return torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)


def relative_error(estimate, reference) -> float:
    e = torch.cat([t.flatten() for t in estimate])
    r = torch.cat([t.flatten() for t in reference])
    return ((e - r).norm() / r.norm()).item()


def test_grad_scaler_float16_autocast_matches_float32_and_skips_overflow():
    eps, seed = 1e-2, 3  # float16's ε: rounding of the float16 gradient over ε
    x, y = amp_data()
    model = tiny_net()
    params = list(model.parameters())
    opt = AdaHessian(params, lr=0.02, seed=seed, hvp="finite-difference", fd_eps=eps)

    # An overflowing scale: the step is skipped, nothing changes, the scaler backs off.
    scaler = RecordingScaler("cpu", init_scale=2.0**30)
    before = [p.detach().clone() for p in params]
    opt.step(amp_closure(model, x, y, torch.float16, scaler), scaler=scaler)
    scaler.update()
    assert opt.skipped_steps == 1 and opt.state_dict()["adahessian"]["steps"] == 0
    assert all(torch.equal(p, b) for p, b in zip(params, before, strict=True))
    assert not opt.state
    assert scaler.get_scale() == 2.0**29

    # A sane scale: every step is taken, its estimate (unscaled) matches float32's.
    opt = AdaHessian(params, lr=0.02, seed=seed, hvp="finite-difference", fd_eps=eps)
    scaler = RecordingScaler("cpu", init_scale=2.0**8)
    probe_source = torch.Generator().manual_seed(seed)  # the optimizer's probe stream
    errors = []
    for step in range(3):
        probes = rademacher(params, generator=probe_source)
        _, reference = finite_difference_diagonal(
            amp_closure(model, x, y, torch.float32), params, probes=[probes], eps=eps
        )
        opt.step(amp_closure(model, x, y, torch.float16, scaler), scaler=scaler)
        scaler.update()
        scale = scaler.scales[step]
        errors.append(relative_error([e / scale for e in scaler.estimates[step]], reference))
    assert opt.skipped_steps == 0 and opt.state_dict()["adahessian"]["hessian_updates"] == 3
    assert scaler.get_scale() == 2.0**8  # no overflow, no growth yet
    assert max(errors) < 0.05, errors  # measured 0.015
    assert all(torch.isfinite(p).all() for p in params)
    assert not all(torch.equal(p, b) for p, b in zip(params, before, strict=True))


def test_bfloat16_autocast_estimate_matches_float32():
    eps, seed = 1e-1, 3  # bfloat16's ε
    x, y = amp_data()
    model = tiny_net()
    params = list(model.parameters())

    def estimate(dtype):
        return finite_difference_diagonal(
            amp_closure(model, x, y, dtype),
            params,
            generator=torch.Generator().manual_seed(seed),
            eps=eps,
        )[1]

    # Measured 0.013 (rounding of the bfloat16 gradients over ε); the same ε in both, so the
    # truncation error cancels.
    assert relative_error(estimate(torch.bfloat16), estimate(torch.float32)) < 0.05

    # Training steps under bfloat16 autocast, without a scaler. (The updates themselves are not
    # compared with float32's: g / (|D| + eps) amplifies the rounding of estimates near zero.)
    opt = AdaHessian(params, lr=0.02, seed=seed, hvp="finite-difference", fd_eps=eps)
    for _ in range(3):
        loss = opt.step(amp_closure(model, x, y, torch.bfloat16))
        assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert opt.state_dict()["adahessian"]["hessian_updates"] == 3
    assert all(torch.isfinite(p).all() for p in params)
    assert all(p.dtype == torch.float32 for p in params)
    assert not torch.equal(params[0], next(tiny_net().parameters()))


# ----------------------------------------------------------------------------- 6, 7. DDP, FSDP2


def import_worker():
    sys.path.insert(0, str(HERE))
    try:
        import fd_dist_worker
    finally:
        sys.path.remove(str(HERE))
    return fd_dist_worker


def flat(tensors) -> torch.Tensor:
    return torch.cat([t.detach().flatten() for t in tensors])


@needs_gloo
def test_ddp_two_ranks_equal_one_process_with_the_double_batch(two_ranks):
    r0, r1 = two_ranks(WORKER, "ddp")
    assert r0["seed"] == r1["seed"], "seed=None: rank 0's seed must be broadcast"
    assert r0["steps"] == 4 and r0["hessian_updates"] == 2
    assert r0["params"] == r1["params"]

    worker = import_worker()
    batches = worker.data(4, 8)  # the concatenation of both ranks' halves

    def single(seed: int) -> torch.Tensor:
        model = worker.make_model(seed=0)
        worker.train(model, worker.make_opt(model.parameters(), seed=seed), batches)
        return flat(model.parameters())

    got = torch.tensor(r0["params"], dtype=F64)
    # DDP averages the two halves' gradients, the single process takes the mean over the whole
    # batch: they differ by rounding (1e-17), which the quotient divides by ε = 1e-5 and the
    # update g / (|D| + 1e-4) magnifies where the estimate is near zero (measured 2e-7).
    torch.testing.assert_close(got, single(r0["seed"]), rtol=1e-5, atol=1e-7)
    other_probes = single(r0["seed"] + 1)
    assert (got - other_probes).abs().max() > 1e-3, "the probes matter: the seed was broadcast"


@needs_gloo
def test_fsdp2_shard_estimates_equal_the_full_batch_estimate_with_the_gathered_probe(two_ranks):
    pytest.importorskip("torch.distributed.fsdp", reason="needs FSDP2")
    r0, r1 = two_ranks(WORKER, "fsdp")
    for key in ("probes", "estimate", "params"):  # all-gathered: the same on both ranks
        assert r0[key] == r1[key], key
    assert r0["probe_types"] == ["DTensor"] * 6
    assert r0["params_unchanged_by_estimate"] and r0["hessian_updates"] == 1

    worker = import_worker()
    model = worker.make_model(seed=0)
    params = list(model.parameters())
    sizes = [p.numel() for p in params]
    v = [
        c.view(p.shape)
        for c, p in zip(torch.tensor(r0["probes"], dtype=F64).split(sizes), params, strict=True)
    ]
    # Each rank drew its own shard's probe from seed + rank (rows split in halves by Shard(0)).
    for rank in range(2):
        shards = [t.chunk(2)[rank] for t in v]
        drawn = rademacher(shards, generator=torch.Generator().manual_seed(worker.FSDP_SEED + rank))
        assert all(torch.equal(a, b) for a, b in zip(shards, drawn, strict=True))
    assert r0["local_probe_shapes"] == [list(t.chunk(2)[0].shape) for t in v]

    x, y = worker.data(1, 8)[0]  # the whole batch
    closure = closure_for(model, model, x, y, F.mse_loss)  # model.zero_grad()
    _, full_batch = finite_difference_diagonal(closure, params, probes=[v], eps=1e-5)
    sharded = torch.tensor(r0["estimate"], dtype=F64)
    torch.testing.assert_close(sharded, flat(full_batch), rtol=1e-7, atol=1e-9)
    grads = torch.autograd.grad(F.mse_loss(model(x), y), params, create_graph=True)
    exact = flat(hutchinson_diagonal(grads, params, probes=[v]))
    torch.testing.assert_close(sharded, exact, rtol=1e-3, atol=1e-4 * exact.abs().max().item())

    # The optimizer's step on the shards equals one full-batch step with that estimate.
    opt = AdaHessian(params, lr=0.05, seed=worker.FSDP_SEED)
    closure()
    opt.step(hessian=full_batch)
    torch.testing.assert_close(
        torch.tensor(r0["params"], dtype=F64), flat(params), rtol=1e-9, atol=1e-12
    )


@needs_gloo
@pytest.mark.parametrize("mode", ["ddp", "fsdp"])
def test_distributed_fd_example_runs_under_torchrun(mode):
    example = ROOT / "examples" / "distributed_fd.py"
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc-per-node",
            "2",
            str(example),
            "--mode",
            mode,
            "--steps",
            "6",
        ],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # torchrun relays both ranks' output: their lines may arrive glued together.
    sums = dict(re.findall(r"rank (\d)/2: parameter checksum (-?\d+\.\d{12})", out.stdout))
    assert sorted(sums) == ["0", "1"] and sums["0"] == sums["1"], out.stdout
    assert f"{mode}: " in out.stdout
