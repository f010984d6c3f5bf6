"""The Lightning module that trains any registered zpix model.

Objectives:

* PDF heads (Pasquet et al. 2019, Sect. 3.6): cross-entropy between the softmax over redshift bins
  and the bin holding z_spec, ``L = -log p_k(z_spec)``.
* Regression heads (John William et al., Sect. 3): the Huber loss on z,
  ``L_δ(r) = r²/2 if |r| ≤ δ else δ(|r| − δ/2)`` with r = ẑ − z_spec, plus a Gaussian negative
  log-likelihood ``(z_spec − ẑ)²/(2σ²) + log σ`` for the second output, with ẑ detached so the
  uncertainty head never pulls the point estimate away from the Huber solution.

Lightning owns devices, DDP, precision, checkpoints and progress bars; this class only defines
the steps.
"""

from __future__ import annotations

from typing import Any

import lightning as L
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from zpix.evaluation.metrics import delta_z, outlier_fraction, sigma_mad
from zpix.hardware import train_chunk
from zpix.models import create_model
from zpix.pdf import RedshiftGrid
from zpix.precision import autocast_dtype, keep_ends_fp32
from zpix.training.augment import random_dihedral

LOG_SIGMA_MIN = float(np.log(1e-4))
LR_SCHEDULES = ("none", "plateau", "cosine")


def regression_to_pdf(out: Tensor, edges: Tensor) -> Tensor:
    """Probabilities per bin of the Gaussian N(ẑ, σ) given by a regression head's (ẑ, log σ) output.

    ``P_k = Φ((e_{k+1} − ẑ)/σ) − Φ((e_k − ẑ)/σ)``, renormalised to the grid.
    """
    mu = out[:, :1].float()
    sigma = out[:, 1:2].float().clamp(min=LOG_SIGMA_MIN).exp()
    cdf = 0.5 * (1 + torch.erf((edges[None, :] - mu) / (sigma * 2**0.5)))
    probs = (cdf[:, 1:] - cdf[:, :-1]).clamp(min=0)
    total = probs.sum(dim=1, keepdim=True)
    # a Gaussian wholly off the grid: put its mass in the nearest edge bin
    nearest = F.one_hot(torch.bucketize(mu[:, 0].contiguous(), edges[1:-1]), probs.shape[1]).to(probs)
    return torch.where(total > 1e-12, probs / total.clamp(min=1e-12), nearest)


class PhotoZModule(L.LightningModule):
    """Wraps a model from the registry with its loss, optimiser and augmentation."""

    def __init__(
        self,
        *,
        model_name: str,
        model_config: dict[str, Any],
        grid: dict[str, Any],
        loss: str = "auto",
        huber_delta: float = 1e-4,
        lr: float = 1e-3,
        weight_decay: float = 0.0,
        augment: bool = True,
        channels_last: bool = False,
        lr_schedule: str = "none",
        lr_factor: float = 0.1,
        lr_patience: int = 2,
        compile: str = "none",
        head_channels: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = create_model(model_name, **model_config)
        if head_channels:  # a head retrained with r-magnitude channels (zpix debias --mag-channels)
            from zpix.debias.multichannel import head_like

            self.model.head = head_like(self.model.head, head_channels)
        self.grid = RedshiftGrid.from_dict(grid)
        self.register_buffer("edges", torch.as_tensor(self.grid.edges, dtype=torch.float32), persistent=False)
        kind = self.model.output_kind
        self.loss_name = {"pdf": "cross_entropy", "regression": "huber"}[kind] if loss == "auto" else loss
        if (kind, self.loss_name) not in {("pdf", "cross_entropy"), ("regression", "huber")}:
            raise ValueError(f"loss {loss!r} does not fit a model whose output is {kind!r}")
        if kind == "pdf" and (self.model.n_bins, self.model.z_min, self.model.z_max) != (
            self.grid.n_bins, self.grid.z_min, self.grid.z_max
        ):
            raise ValueError(f"the model's bins ({self.model.n_bins} on {self.model.z_min}-{self.model.z_max}) "
                             f"differ from the run's grid {self.grid}")
        if lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {LR_SCHEDULES}, not {lr_schedule!r}")
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        # the bound forward, not the module, is compiled: a compiled module stored on self would be a
        # second submodule and put every weight twice in the checkpoints
        self._compiled = None if compile == "none" else torch.compile(self.model.forward, backend=compile)
        self._val_outputs: list[tuple[Tensor, Tensor]] = []

    def setup(self, stage: str) -> None:
        # under bf16-mixed (autocast) the first convolution and the fully connected head stay in fp32:
        # bf16 weights in the first convolution shift every redshift the same way (zpix.precision)
        trainer = self._trainer
        if trainer is not None and autocast_dtype(str(trainer.precision)) is not None:
            keep_ends_fp32(self.model)

    # -- inference --------------------------------------------------------------------------
    def _inputs(self, batch: dict[str, Tensor], train: bool) -> tuple[Tensor | None, Tensor, Tensor | None]:
        images = batch.get("image")
        if images is not None:
            if train and self.hparams.augment:
                images = random_dihedral(images)
            if self.hparams.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
        return images, batch["ebv"], batch.get("mags")

    def raw_output(self, batch: dict[str, Tensor], train: bool = False) -> Tensor:
        inputs = self._inputs(batch, train)
        return self.model(*inputs) if self._compiled is None else self._compiled(*inputs)

    def probabilities(self, out: Tensor) -> Tensor:
        """Per-bin probabilities (B, n_bins) from the model's raw output."""
        if self.model.output_kind == "pdf":
            return torch.softmax(out.float(), dim=1)
        return regression_to_pdf(out, self.edges)

    def forward(self, batch: dict[str, Tensor]) -> Tensor:
        return self.probabilities(self.raw_output(batch))

    # -- losses -----------------------------------------------------------------------------
    def loss(self, out: Tensor, z: Tensor) -> Tensor:
        if self.loss_name == "cross_entropy":
            labels = torch.bucketize(z, self.edges[1:-1])
            return F.cross_entropy(out.float(), labels)
        mu, log_sigma = out[:, 0].float(), out[:, 1].float().clamp(min=LOG_SIGMA_MIN)
        huber = F.huber_loss(mu, z, delta=self.hparams.huber_delta)
        nll = 0.5 * ((z - mu.detach()) / log_sigma.exp()) ** 2 + log_sigma
        # Huber values scale with delta; dividing keeps the two terms commensurate for any delta
        return huber / self.hparams.huber_delta + nll.mean()

    def _train_chunk(self, n: int) -> int:
        """Images per forward/backward pass of a training step (zpix.hardware.train_chunk), or ``n``."""
        trainer = self._trainer
        if trainer is None or trainer.world_size != 1 or trainer.accumulate_grad_batches != 1:
            return n  # DDP would all-reduce once per pass; keep one pass per step there
        if autocast_dtype(str(trainer.precision)) == torch.float16:
            return n  # a gradient scaler expects one backward per step
        return min(n, train_chunk(self.device) or n)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """The mean loss over the batch.  On CPUs the batch runs in slices of ``train_chunk`` images whose
        gradients add up in ``.grad``: the mean loss is Σ_i (n_i/N) L_i, so the gradient is the whole
        batch's (the networks have no batch normalisation), at the per-image speed of a small batch.
        The augmentation is drawn once for the whole batch, as without slices."""
        n = len(batch["z"])
        chunk = self._train_chunk(n)
        if chunk >= n:
            loss = self.loss(self.raw_output(batch, train=True), batch["z"])
        else:
            # Lightning zeroes the gradients between training_step and its backward: zero them here
            # instead, and skip that call once (optimizer_zero_grad below)
            self.optimizers().zero_grad(set_to_none=True)
            self._grads_in_step = True
            images, ebv, mags = self._inputs(batch, train=True)
            done = torch.zeros((), device=batch["z"].device)
            for start in range(0, n, chunk):
                part = slice(start, start + chunk)
                inputs = [None if t is None else t[part] for t in (images, ebv, mags)]
                out = self.model(*inputs) if self._compiled is None else self._compiled(*inputs)
                loss = self.loss(out, batch["z"][part]) * (len(batch["z"][part]) / n)
                if start + chunk < n:
                    loss.backward()  # Lightning runs the backward of the last slice, returned below
                    done = done + loss.detach()
            loss = loss + done  # the whole batch's loss; its gradient is the last slice's
        self.log("train_loss", loss, prog_bar=True, on_step=True, on_epoch=True, sync_dist=True,
                 batch_size=len(batch["z"]))
        return loss

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer: torch.optim.Optimizer) -> None:
        if getattr(self, "_grads_in_step", False):  # training_step zeroed them and holds its slices' gradients
            self._grads_in_step = False
            return
        super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> None:
        out = self.raw_output(batch)
        self.log("val_loss", self.loss(out, batch["z"]), prog_bar=True, sync_dist=True, batch_size=len(batch["z"]))
        probs = self.probabilities(out)
        self._val_outputs.append(((probs * torch.as_tensor(self.grid.centers, device=probs.device,
                                                           dtype=probs.dtype)).sum(1).detach(), batch["z"]))

    def on_validation_epoch_end(self) -> None:
        if not self._val_outputs:
            return
        z_phot = torch.cat([a for a, _ in self._val_outputs])
        z_spec = torch.cat([b for _, b in self._val_outputs])
        self._val_outputs.clear()
        # under DDP each rank saw a shard: score the whole validation set on every rank
        z_phot = self.all_gather(z_phot).reshape(-1).float().cpu().numpy()
        z_spec = self.all_gather(z_spec).reshape(-1).float().cpu().numpy()
        dz = delta_z(z_phot, z_spec)
        self.log("val_sigma_mad", sigma_mad(dz), prog_bar=True)
        self.log("val_eta", outlier_fraction(dz, 0.05))

    def predict_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        return self(batch)

    def configure_optimizers(self) -> torch.optim.Optimizer | dict[str, Any]:
        optimizer = torch.optim.Adam(self.parameters(), lr=self.hparams.lr, weight_decay=self.hparams.weight_decay)
        if self.hparams.lr_schedule == "none":
            return optimizer
        if self.hparams.lr_schedule == "cosine":
            # lr_t = lr (1 + cos(pi t / T)) / 2 over the T optimiser steps the Trainer will take
            steps = max(1, int(self.trainer.estimated_stepping_batches))
            cosine = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=steps)
            return {"optimizer": optimizer, "lr_scheduler": {"scheduler": cosine, "interval": "step"}}
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="min", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience)
        return {"optimizer": optimizer,
                "lr_scheduler": {"scheduler": scheduler, "monitor": "val_loss", "interval": "epoch"}}
