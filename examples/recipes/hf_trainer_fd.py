"""AdaHessian with the Hugging Face ``Trainer`` and finite-difference curvature: no double backward.

``AdaHessian(hvp="finite-difference")`` takes its Hessian-vector products from ordinary gradients,
:math:`Hv \\approx (g(\\theta + \\varepsilon v) - g(\\theta)) / \\varepsilon`, so the model keeps
the default attention (``sdpa``, fused kernels without double backward), and works with whatever
else only ``backward()`` supports. It needs a *closure* that it can call again at
:math:`\\theta + \\varepsilon v`.

The stock ``Trainer`` calls ``optimizer.step()`` without a closure, after ``training_step`` has
run the forward and backward passes. This subclass's ``training_step`` builds the closure from
the batch (``compute_loss`` + ``accelerator.backward``), and on a Hessian step hands it to
:func:`adahessian.finite_difference_diagonal` with the optimizer's own probes
(``opt.hessian_probes()``), ε and scheme: it returns the loss at :math:`\\theta` (whose gradient
stays in ``p.grad``) and the estimate, which goes to ``opt.add_hessian_estimate``. The Trainer's
``optimizer.step()`` then uses that estimate: the step is exactly ``opt.step(closure)``'s (the same
passes, probes and random state: dropout draws the same masks at :math:`\\theta` and
:math:`\\theta + \\varepsilon v`). Non-Hessian steps cost one forward and backward, as usual.

Limits: ``gradient_accumulation_steps`` must be 1 (the perturbed passes must see the whole
step's batch), and gradient clipping is off (``max_grad_norm=0``): clipping rescales the gradient
but not the curvature. Under mixed precision (``fp16=True`` or ``bf16=True``) pass ``fd_eps=1e-2``,
the ε of the dtype the gradients are computed in.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from adahessian import AdaHessian, finite_difference_diagonal


class FiniteDifferenceTrainer(Trainer):
    def adahessian(self) -> AdaHessian:
        optimizer: Any = self.optimizer
        inner = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's wrapper
        if not isinstance(inner, AdaHessian) or inner.hvp != "finite-difference":
            raise TypeError(
                "FiniteDifferenceTrainer needs optimizers=(AdaHessian(..., "
                "hvp='finite-difference'), scheduler)"
            )
        return inner

    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        if self.args.gradient_accumulation_steps != 1:
            raise ValueError(
                "FiniteDifferenceTrainer needs gradient_accumulation_steps=1: the finite-"
                "difference passes must see the whole batch of the step"
            )
        opt = self.adahessian()
        model.train()
        inputs = self._prepare_inputs(inputs)

        def closure() -> torch.Tensor:
            # No zero_grad(): the Trainer zeroes after each step, and the optimizer clears p.grad
            # itself before each perturbed pass.
            with self.compute_loss_context_manager():
                loss = self.compute_loss(model, inputs, num_items_in_batch=num_items_in_batch)
            self.accelerator.backward(loss)
            return loss

        if not opt.hessian_due:
            return closure().detach()
        params, probes = opt.hessian_probes()
        try:
            loss, estimate = finite_difference_diagonal(
                closure, params, probes=probes, eps=opt.fd_eps, scheme=opt.fd_scheme
            )
        except BaseException:
            opt.discard_hessian_probes()  # the next attempt draws the same probes
            raise
        opt.add_hessian_estimate(estimate)  # the Trainer's optimizer.step() uses it
        return loss.detach()


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


if __name__ == "__main__":
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )  # (default attention: sdpa)
    model = BertForSequenceClassification(config)
    ids = torch.randint(1, 64, (256, 12))
    labels = (ids[:, 0] > 32).long()  # learnable from the first token
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0, hvp="finite-difference")
    args = TrainingArguments(
        output_dir="runs/hf-fd-recipe",
        max_steps=60,
        per_device_train_batch_size=32,
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        logging_steps=20,
    )
    trainer = FiniteDifferenceTrainer(
        model=model, args=args, train_dataset=dataset, optimizers=(opt, constant_schedule(opt))
    )
    trainer.train()
    with torch.no_grad():
        model.eval()
        acc = (model(input_ids=ids).logits.argmax(1) == labels).float().mean().item()
    print(
        f"train accuracy after 60 finite-difference AdaHessian steps in the HF Trainer "
        f"({config._attn_implementation} attention): {acc:.3f}"
    )
