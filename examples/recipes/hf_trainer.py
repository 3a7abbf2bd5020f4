"""AdaHessian with the Hugging Face ``Trainer``: a subclass whose training step keeps the graph.

The stock ``Trainer.training_step`` calls backward without ``create_graph``. This subclass calls
``loss.backward(create_graph=opt.hessian_due)`` itself and passes an AdaHessian instance through
``optimizers=(optimizer, scheduler)``. Attention must be twice differentiable: use
``attn_implementation="eager"`` (fused SDPA kernels have no double backward). Gradient clipping is
turned off (``max_grad_norm=0``): it would rescale the gradient but not the curvature.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import Trainer

from adahessian import AdaHessian


class AdaHessianTrainer(Trainer):
    def training_step(self, model, inputs, num_items_in_batch=None):  # type: ignore[override]
        model.train()
        inputs = self._prepare_inputs(inputs)
        loss = self.compute_loss(model, inputs)
        optimizer: Any = self.optimizer
        adahessian = getattr(optimizer, "optimizer", optimizer)  # unwrap accelerate's wrapper
        if not isinstance(adahessian, AdaHessian):
            raise TypeError("AdaHessianTrainer needs optimizers=(AdaHessian(...), scheduler)")
        loss.backward(create_graph=adahessian.hessian_due)
        return loss.detach()


def constant_schedule(optimizer: torch.optim.Optimizer) -> torch.optim.lr_scheduler.LRScheduler:
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)


if __name__ == "__main__":
    from transformers import BertConfig, BertForSequenceClassification, TrainingArguments

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=32, num_labels=2,
        attn_implementation="eager",
    )  # fmt: skip
    model = BertForSequenceClassification(config)
    ids = torch.randint(1, 64, (256, 12))
    labels = (ids[:, 0] > 32).long()  # learnable from the first token
    dataset = [{"input_ids": i, "labels": lab} for i, lab in zip(ids, labels, strict=True)]
    opt = AdaHessian(model.parameters(), lr=0.05, seed=0)
    args = TrainingArguments(
        output_dir="runs/hf-recipe", max_steps=60, per_device_train_batch_size=32,
        max_grad_norm=0.0, report_to=[], save_strategy="no", use_cpu=True, logging_steps=20,
    )  # fmt: skip
    trainer = AdaHessianTrainer(
        model=model, args=args, train_dataset=dataset, optimizers=(opt, constant_schedule(opt))
    )
    trainer.train()
    with torch.no_grad():
        model.eval()
        acc = (model(input_ids=ids).logits.argmax(1) == labels).float().mean().item()
    print(f"train accuracy after 60 AdaHessian steps in the HF Trainer: {acc:.3f}")
