"""Multimodal options of Ait Ouahmed et al. (2024): the slides' table of modality sizes and orders."""

from __future__ import annotations

import pytest
import torch

from zpix.models import create_model
from zpix.models.multimodal import modality_bands, modality_names


def test_slides_table_of_modalities() -> None:
    """The slides' table for ugriz: sizes 2-4, orders 1-3, and orders taken together."""
    names = lambda mods: modality_names("ugriz", mods)  # noqa: E731
    assert names(modality_bands(5, 2, 1)) == ["u_g", "g_r", "r_i", "i_z"]
    assert names(modality_bands(5, 2, 2)) == ["u_r", "g_i", "r_z"]
    assert names(modality_bands(5, 2, 3)) == ["u_i", "g_z"]
    assert names(modality_bands(5, 3, 1)) == ["u_g_r", "g_r_i", "r_i_z"]
    assert names(modality_bands(5, 3, 2)) == ["u_r_z"]
    assert names(modality_bands(5, 4, 1)) == ["u_g_r_i", "g_r_i_z"]
    # "2 band first and second order modalities": 4 + 3 stems, no duplicates
    assert names(modality_bands(5, 2, (1, 2))) == ["u_g", "g_r", "r_i", "i_z", "u_r", "g_i", "r_z"]
    with pytest.raises(ValueError, match="cannot hold"):
        modality_bands(5, 3, 3)


@pytest.mark.parametrize(("options", "n_modalities", "width"), [
    ({"modality_order": [1, 2]}, 7, 16),  # second-order modalities added to the first-order ones
    ({"modality_size": 3}, 3, 24),  # size-3 first-order modalities
    ({"modality_size": 3, "modality_order": 2}, 1, 24),
])
def test_second_order_and_size3_shapes_and_training(options: dict, n_modalities: int, width: int) -> None:
    torch.manual_seed(0)
    model = create_model("multimodal-small", n_bands=5, image_size=16, n_bins=20, **options)
    assert model.n_modalities == n_modalities and model.modality_width == width
    assert model.stems.out_channels == n_modalities * width
    x, ebv = torch.randn(8, 5, 16, 16), torch.rand(8)
    feats = model.features(x)
    assert feats.shape == (8, model.out_features)
    assert torch.allclose(model.head(feats, ebv), model(x, ebv))  # forward = head(features)
    # a few optimiser steps on one batch: the loss must fall (gradients reach every modality's stem)
    labels = torch.randint(0, 20, (8,))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.cross_entropy(model(x, ebv), labels)
        opt.zero_grad()
        loss.backward()
        assert model.stems.layers[0].conv.weight.grad.abs().sum() > 0
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_modality_switched_off_at_test_time_ignores_its_only_band() -> None:
    """With r_i_z off (size 3), the z band -- in no other modality -- no longer changes the output."""
    model = create_model("multimodal-small", n_bands=5, image_size=16, modality_size=3, use_ebv=False).eval()
    x = torch.randn(4, 5, 16, 16)
    x_z = x.clone()
    x_z[:, 4] += 1.0
    with torch.no_grad():
        assert not torch.allclose(model(x), model(x_z))
        model.set_modality_mask([True, True, False])
        assert torch.allclose(model(x), model(x_z))
