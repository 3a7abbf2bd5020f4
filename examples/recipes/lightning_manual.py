"""AdaHessian in PyTorch Lightning: manual optimisation.

Lightning's automatic optimisation calls ``loss.backward()`` itself, without the graph AdaHessian
needs. With ``automatic_optimization = False`` the training step calls
``self.manual_backward(loss, create_graph=opt.hessian_due)`` and ``opt.step()``.
"""

from __future__ import annotations

import lightning as L
import torch
from torch import nn

from adahessian import AdaHessian


class AdaHessianModule(L.LightningModule):
    def __init__(self, net: nn.Module, lr: float = 0.15, seed: int = 0) -> None:
        super().__init__()
        self.net = net
        self.lr = lr
        self.seed = seed
        self.automatic_optimization = False  # we call backward with create_graph ourselves

    def training_step(self, batch, batch_idx):
        x, y = batch
        opt = self.optimizers()
        adahessian = opt.optimizer  # the AdaHessian inside Lightning's wrapper
        opt.zero_grad()
        loss = nn.functional.cross_entropy(self.net(x), y)
        self.manual_backward(loss, create_graph=adahessian.hessian_due)
        opt.step()
        self.log("train_loss", loss.detach())
        return loss.detach()

    def configure_optimizers(self):
        return AdaHessian(self.parameters(), lr=self.lr, seed=self.seed)


def fit(net: nn.Module, loader, max_steps: int) -> AdaHessianModule:
    module = AdaHessianModule(net)
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, loader)
    return module


if __name__ == "__main__":
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    data = torch.utils.data.TensorDataset(
        torch.tensor(X / 16.0, dtype=torch.float32), torch.tensor(y)
    )
    loader = torch.utils.data.DataLoader(data, batch_size=64, shuffle=True)
    net = nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))
    fit(net, loader, max_steps=100)
    with torch.no_grad():
        acc = (net(data.tensors[0]).argmax(1) == data.tensors[1]).float().mean().item()
    print(f"train accuracy after 100 AdaHessian steps in Lightning: {acc:.3f}")
