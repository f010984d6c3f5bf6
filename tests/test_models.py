"""Models: registry, the exact Pasquet et al. (2019) architecture, and behaviour of every registered net."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from zpix.models import create_model, list_models, model_config, register_model
from zpix.models.hybrid import magnitude_statistics
from zpix.models.layers import avg_pool_same
from zpix.models.multimodal import modality_bands

# Table A.1 of Pasquet et al. (2019): (layer, kernel side, input maps, output maps, output h = w).
TABLE_A1 = [
    ("C1", 5, 5, 64, 64),
    ("C2", 1, 64, 48, 32), ("C3", 1, 64, 48, 32), ("C4", 1, 64, 48, 32), ("C5", 1, 64, 64, 32),
    ("C6", 3, 48, 64, 32), ("C7", 5, 48, 64, 32),
    ("C8", 1, 240, 64, 32), ("C9", 1, 240, 64, 32), ("C10", 1, 240, 64, 32), ("C11", 1, 240, 92, 32),
    ("C12", 3, 64, 92, 32), ("C13", 5, 64, 92, 32),
    ("C14", 1, 340, 92, 16), ("C15", 1, 340, 92, 16), ("C16", 1, 340, 92, 16), ("C17", 1, 340, 128, 16),
    ("C18", 3, 92, 128, 16), ("C19", 5, 92, 128, 16),
    ("C20", 1, 476, 92, 16), ("C21", 1, 476, 92, 16), ("C22", 1, 476, 92, 16), ("C23", 1, 476, 128, 16),
    ("C24", 3, 92, 128, 16), ("C25", 5, 92, 128, 16),
    ("C26", 1, 476, 92, 8), ("C27", 1, 476, 92, 8), ("C28", 1, 476, 128, 8), ("C29", 3, 92, 128, 8),
]  # fmt: skip
FLATTEN = 8 * 8 * 348  # Co5
FC = [(FLATTEN + 1, 1096), (1096, 1096)]  # FC1 gets E(B-V) as one extra input (Sect. 3.6)
OUTPUT = (1096, 180)

REGISTERED = [
    "hybrid", "hybrid-images", "hybrid-mags", "multimodal", "multimodal-small", "pasquet2019", "pasquet2019-small"
]  # fmt: skip
IMAGE_MODELS = [name for name in list_models() if model_config(name).get("use_images", True)]


# --------------------------------------------------------------------------------------------------
# helpers


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Run this module's many small forward/backward passes on one thread: with other processes busy on
    a 2-core machine, OpenMP's thread barriers would otherwise dominate the wall time."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_inputs(model: nn.Module, batch: int, seed: int = 0) -> dict[str, torch.Tensor | None]:
    """Random inputs matching a model's configuration (images, ebv, mags as it needs them)."""
    cfg = model.zpix_config
    gen = torch.Generator().manual_seed(seed)
    images = None
    if cfg.get("use_images", True):
        size = cfg["image_size"]
        images = torch.randn(batch, cfg["n_bands"], size, size, generator=gen)
    mags = None
    if cfg.get("use_mags", False):
        mags = 18 + 2 * torch.randn(batch, cfg["n_mags"], generator=gen)
    ebv = 0.1 * torch.rand(batch, generator=gen)
    return {"images": images, "ebv": ebv, "mags": mags}


def expected_shape(model: nn.Module, batch: int) -> tuple[int, int]:
    return (batch, model.n_bins) if model.output_kind == "pdf" else (batch, 2)


# --------------------------------------------------------------------------------------------------
# registry


def test_registry_lists_models() -> None:
    assert list_models() == REGISTERED


def test_unknown_model_lists_known_ones() -> None:
    with pytest.raises(ValueError, match="known models: .*pasquet2019-small"):
        create_model("resnet50")


def test_unknown_option_is_refused() -> None:
    with pytest.raises(ValueError, match="no option.*n_band\\b.*options are"):
        create_model("pasquet2019-small", n_band=4)


def test_duplicate_registration_is_refused() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_model("pasquet2019")(lambda *, n_bands=5: nn.Identity())


def test_factory_without_default_is_refused() -> None:
    with pytest.raises(TypeError, match="default"):
        register_model("zz-test-no-default")(lambda n_bands: nn.Identity())
    assert "zz-test-no-default" not in list_models()


def test_positional_configuration_is_refused() -> None:
    """Models, their parts, the factories and the Lightning module take options by keyword only: with
    13-18 options, a positional call binds a value to the wrong option as soon as one is reordered."""
    import importlib
    import inspect

    from zpix.models.heads import BinnedPDFHead
    from zpix.models.hybrid import HybridNet, MagnitudeEncoder, hybrid
    from zpix.models.inception import InceptionBackbone
    from zpix.models.multimodal import multimodal
    from zpix.models.networks import pasquet2019
    from zpix.training.module import PhotoZModule

    classes = []
    for name in ("base", "heads", "hybrid", "inception", "layers", "multimodal", "networks"):
        module = importlib.import_module(f"zpix.models.{name}")
        classes += [c for c in vars(module).values() if inspect.isclass(c) and issubclass(c, nn.Module)
                    and c.__module__ == module.__name__ and "__init__" in vars(c)]
    assert len(classes) >= 12
    for cls in [*classes, PhotoZModule]:
        options = list(inspect.signature(cls.__init__).parameters.values())[1:]
        assert options and all(p.kind is p.KEYWORD_ONLY for p in options), cls.__name__
    with pytest.raises(TypeError, match="positional"):
        BinnedPDFHead(8, 20)
    with pytest.raises(TypeError, match="positional"):
        InceptionBackbone(5, 64)
    encoder = MagnitudeEncoder(n_mags=3, widths=(4,))
    with pytest.raises(TypeError, match="positional"):
        HybridNet(None, encoder, BinnedPDFHead(in_features=4, n_bins=20))
    for factory in (pasquet2019, hybrid, multimodal):
        with pytest.raises(TypeError, match="positional"):
            factory(5)
    with pytest.raises(TypeError, match="positional"):
        PhotoZModule("hybrid-mags", {}, {"n_bins": 20})
    with pytest.raises(TypeError, match="keyword-only"):
        register_model("zz-test-positional")(lambda n_bands=5: nn.Identity())
    assert "zz-test-positional" not in list_models()
    # the parts compose by keyword, and a head that does not fit its parts is refused
    model = HybridNet(cnn=None, mag_net=encoder, head=BinnedPDFHead(in_features=4, n_bins=20, use_ebv=False))
    assert model(None, mags=torch.zeros(2, 3)).shape == (2, 20)
    with pytest.raises(ValueError, match="in_features=4"):
        HybridNet(cnn=None, mag_net=encoder, head=BinnedPDFHead(in_features=5, n_bins=20))


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_config_is_complete_serialisable_and_rebuilds(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_bands=3, image_size=24, n_bins=20, z_max=1.0, use_ebv=False)
    assert model.zpix_name == name
    cfg = model.zpix_config
    assert cfg == model_config(name, n_bands=3, image_size=24, n_bins=20, z_max=1.0, use_ebv=False)
    assert json.loads(json.dumps(cfg)) == cfg  # plain JSON types only (tuples became lists)
    assert cfg["n_bands"] == 3 and cfg["use_ebv"] is False and "modules" in cfg
    if cfg.get("use_mags"):
        model.set_mag_normalization(torch.linspace(18, 22, cfg["n_mags"]), torch.linspace(1, 2, cfg["n_mags"]))
    rebuilt = create_model(model.zpix_name, **json.loads(json.dumps(cfg)))
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture, same buffers
    inputs = make_inputs(model, batch=2)
    model.eval(), rebuilt.eval()
    assert torch.equal(model(**inputs), rebuilt(**inputs))


# --------------------------------------------------------------------------------------------------
# pasquet2019: Table A.1 exactly


@pytest.fixture(scope="module")
def paper_model() -> nn.Module:
    torch.manual_seed(0)
    return create_model("pasquet2019")


def test_table_a1_reading_gives_the_papers_count() -> None:
    """Eq. (B.1)-(B.2): N = sum_conv k^2 n_in n_out + sum_FC n_in n_out = 27 391 464.

    Our reading of Table A.1 reproduces the published number *exactly* when (i) biases and PReLU
    slopes are not counted (Eq. B.1 has kernel weights only), (ii) FC1 sees the flattened Co5 maps,
    8 x 8 x 348 = 22 272, plus the one E(B-V) input (no pooling between Co5 and FC1), (iii) both FC
    layers have 1096 neurons (Sect. 3.6; Table A.1's "1024, 1024" is a typo: 1024 gives 25 819 488
    with the output layer, 25 635 168 without) and (iv) the final 1096 x 180 output layer is not
    counted (the sum stops at FC2).  1096 * 180 = 197 280 is exactly the difference otherwise.
    """
    conv = sum(k * k * n_in * n_out for _, k, n_in, n_out, _ in TABLE_A1)
    fc = sum(n_in * n_out for n_in, n_out in FC)
    assert conv == 1_779_040
    assert conv + fc == 27_391_464
    assert conv + fc + OUTPUT[0] * OUTPUT[1] == 27_391_464 + 197_280


def test_pasquet2019_parameter_count(paper_model: nn.Module) -> None:
    """Our PyTorch model has 27 596 372 parameters = the paper's 27 391 464 (Eq. B.1) + 204 908:

    * 2 628 convolution biases (one per feature map of C1-C29; Sect. 3.2 "plus an adjustable offset"),
    * 2 628 PReLU slopes, one per feature map (He et al. 2015 channel-wise PReLU; Eq. B.1 counts no
      activation parameters, so the count cannot tell channel-wise from shared slopes -- with
      ``prelu="shared"`` there are 29, one per convolution layer C1-C29),
    * 2 192 FC1/FC2 biases, and the output layer's 1096 x 180 weights + 180 biases = 197 460,
      which Eq. (B.1)'s sum leaves out (see the test above).
    """
    params = dict(paper_model.named_parameters())
    total = sum(p.numel() for p in params.values())
    conv_w = sum(m.weight.numel() for m in paper_model.modules() if isinstance(m, nn.Conv2d))
    conv_b = sum(m.bias.numel() for m in paper_model.modules() if isinstance(m, nn.Conv2d))
    linears = [m for m in paper_model.modules() if isinstance(m, nn.Linear)]
    prelu = sum(p.numel() for n, p in params.items() if n.endswith("act.weight"))
    assert [tuple(m.weight.shape) for m in linears] == [(1096, 22273), (1096, 1096), (180, 1096)]
    assert conv_w == 1_779_040
    assert conv_w + linears[0].weight.numel() + linears[1].weight.numel() == 27_391_464
    assert (conv_b, prelu) == (2628, 2628)
    assert total == 27_391_464 + 2628 + 2628 + 2 * 1096 + 1096 * 180 + 180 == 27_596_372
    shared = create_model("pasquet2019", prelu="shared")
    assert sum(p.numel() for p in shared.parameters()) == 27_596_372 - 2628 + 29


def test_pasquet2019_layout(paper_model: nn.Module) -> None:
    """Feature maps of Table A.1 (Co1..Co5 = 240, 340, 476, 476, 348 at 32, 32, 16, 16, 8 pixels);
    average pooling only, PReLU in convolutions, ReLU in FC, no batch-norm and no dropout."""
    kinds = {type(m) for m in paper_model.modules()}
    assert not kinds & {nn.BatchNorm2d, nn.BatchNorm1d, nn.Dropout, nn.MaxPool2d, nn.LayerNorm}
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: shapes.append(tuple(out.shape[1:])))
        for m in paper_model.backbone.trunk.layers
        if type(m).__name__ == "InceptionModule"
    ]
    with torch.no_grad():
        out = paper_model(torch.randn(1, 5, 64, 64), torch.zeros(1))
    for h in hooks:
        h.remove()
    assert shapes == [(240, 32, 32), (340, 32, 32), (476, 16, 16), (476, 16, 16), (348, 8, 8)]
    assert paper_model.backbone.out_features == FLATTEN
    assert out.shape == (1, 180)
    assert paper_model.output_kind == "pdf"
    assert (paper_model.n_bins, paper_model.z_min, paper_model.z_max) == (180, 0.0, 0.4)
    centers = paper_model.bin_centers().tolist()
    assert len(centers) == 180
    assert centers[1] - centers[0] == pytest.approx(0.4 / 180)
    assert 0.4 / 180 == pytest.approx(2.2e-3, rel=0.02)  # "constant width dz = 2.2e-3"
    assert centers[0] == pytest.approx(0.2 / 180) and centers[-1] == pytest.approx(0.4 - 0.2 / 180)


def test_pasquet2019_forward_64x64x5(paper_model: nn.Module) -> None:
    """The full network on two 64x64 ugriz images: finite logits, and FLOPs as Table A.1 implies."""
    x, ebv = torch.randn(2, 5, 64, 64), torch.tensor([0.02, 0.2])
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = paper_model(x, ebv)
    assert out.shape == (2, 180) and torch.isfinite(out).all()
    macs = sum(k * k * n_in * n_out * hw * hw for _, k, n_in, n_out, hw in TABLE_A1)
    macs += sum(n_in * n_out for n_in, n_out in [*FC, OUTPUT])
    assert counter.get_total_flops() == 2 * 2 * macs  # 2 images, 2 FLOPs per multiply-add
    assert 2 * macs == pytest.approx(1.519e9, rel=1e-3)


def test_small_is_at_least_15x_cheaper(paper_model: nn.Module) -> None:
    small = create_model("pasquet2019-small")
    x, ebv = torch.randn(1, 5, 64, 64), torch.zeros(1)
    flops = []
    for model in (paper_model, small):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            model(x, ebv)
        flops.append(counter.get_total_flops())
    assert flops[0] >= 15 * flops[1]
    assert flops[1] == 46_688_768  # per 64x64x5 image; reported in the docs
    assert sum(p.numel() for p in small.parameters()) == 499_812


# --------------------------------------------------------------------------------------------------
# every registered model


# The two full-size networks at 64x64x5 run forward only, in their own tests (CPU time).
FULL_SIZE = {"pasquet2019", "multimodal"}
CASES = [
    pytest.param(name, bands, size, id=f"{name}-{bands}x{size}")
    for name in list_models()
    for bands, size in [(4, 36), (5, 64), (3, 20)]
    if not (name in FULL_SIZE and size == 64)
]


@pytest.mark.parametrize(("name", "n_bands", "size"), CASES)
def test_forward_backward_all_parameters_get_gradients(name: str, n_bands: int, size: int) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_bands=n_bands, image_size=size)
    model.train()
    inputs = make_inputs(model, batch=2)
    out = model(**inputs)
    assert out.shape == expected_shape(model, 2)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    out.square().mean().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, pname
        assert torch.isfinite(p.grad).all(), pname
        assert p.grad.abs().max() > 0, pname


@pytest.mark.parametrize("name", list_models())
def test_without_ebv(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_bands=4, image_size=20, use_ebv=False).eval()
    inputs = make_inputs(model, batch=2)
    with torch.no_grad():
        out = model(**{**inputs, "ebv": None})
        # E(B-V) given to a model built without it is ignored
        assert torch.equal(out, model(**inputs))
    assert out.shape == expected_shape(model, 2)
    with_ebv = create_model(name, n_bands=4, image_size=20, use_ebv=True)
    with pytest.raises(ValueError, match="use_ebv=True"):
        with_ebv(**{**make_inputs(with_ebv, 2), "ebv": None})


@pytest.mark.parametrize("name", list_models())
def test_ebv_changes_the_output(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_bands=4, image_size=20, use_ebv=True).eval()
    inputs = make_inputs(model, batch=2)
    with torch.no_grad():
        a = model(**inputs)
        b = model(**{**inputs, "ebv": inputs["ebv"].reshape(2, 1) + 0.5})  # (B, 1) works too
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("name", list_models())
def test_channels_last_matches_contiguous(name: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, n_bands=5, image_size=24).eval()
    inputs = make_inputs(model, batch=2)
    with torch.no_grad():
        ref = model(**inputs)
        model_cl = model.to(memory_format=torch.channels_last)
        if inputs["images"] is not None:
            inputs["images"] = inputs["images"].to(memory_format=torch.channels_last)
        out = model_cl(**inputs)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", IMAGE_MODELS)
def test_wrong_image_shape_is_a_clear_error(name: str) -> None:
    model = create_model(name, n_bands=4, image_size=20)
    inputs = make_inputs(model, batch=2)
    with pytest.raises(ValueError, match=r"expects images of shape \(B, 4, 20, 20\).*n_bands="):
        model(**{**inputs, "images": torch.zeros(2, 5, 20, 20)})


def test_small_model_learns_a_fixed_batch() -> None:
    """A few Adam steps of cross-entropy on one batch lower the loss (the net can fit)."""
    torch.manual_seed(0)
    model = create_model("pasquet2019-small", n_bands=5, image_size=16)
    x, ebv = torch.randn(16, 5, 16, 16), 0.1 * torch.rand(16)
    y = torch.randint(0, 180, (16,))
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(40):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x, ebv), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] == pytest.approx(5.19, abs=0.3)  # ~ log(180): an untrained net is ~uniform
    assert losses[-1] < 0.5 * losses[0]


# --------------------------------------------------------------------------------------------------
# layers


def test_same_average_pool_matches_tensorflow_semantics() -> None:
    """2x2 stride-1 'SAME' pooling: pad after, average over real pixels only (Table A.1, P2)."""
    x = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]]).reshape(1, 1, 3, 3)
    expected = torch.tensor([[3.0, 4.0, 4.5], [6.0, 7.0, 7.5], [7.5, 8.5, 9.0]]).reshape(1, 1, 3, 3)
    torch.testing.assert_close(avg_pool_same(x, 2), expected)
    assert avg_pool_same(x, 3).shape == x.shape


# --------------------------------------------------------------------------------------------------
# hybrid (John William et al., KiDS bright)


def test_magnitude_statistics_ignore_missing_values() -> None:
    mags = np.array([[18.0, 99.0], [20.0, 21.0], [np.nan, 23.0], [22.0, 95.0]])
    mean, std = magnitude_statistics(mags)
    np.testing.assert_allclose(mean, [20.0, 22.0])
    np.testing.assert_allclose(std, [np.std([18, 20, 22]), 1.0])


def test_hybrid_missing_magnitudes_are_masked() -> None:
    """NaN and 99 give finite outputs; the mask alone (same standardised value) changes the output."""
    torch.manual_seed(0)
    model = create_model("hybrid", n_bands=4, image_size=20, n_mags=3).eval()
    model.set_mag_normalization([20.0, 20.5, 21.0], [1.0, 1.5, 2.0])
    images = torch.randn(4, 4, 20, 20)
    mags = torch.tensor(
        [[19.0, 20.0, 21.0], [float("nan"), 20.0, 21.0], [99.0, 20.0, 21.0], [20.0, 20.0, 21.0]]
    )
    encoded = model.mag_net.inputs(mags)
    assert torch.isfinite(encoded).all()
    # standardised (m - mean) / std with missing -> 0, then the observed mask
    torch.testing.assert_close(encoded[0], torch.tensor([-1.0, -1 / 3, 0.0, 1.0, 1.0, 1.0]))
    torch.testing.assert_close(encoded[1], torch.tensor([0.0, -1 / 3, 0.0, 0.0, 1.0, 1.0]))
    assert torch.equal(encoded[1], encoded[2])  # NaN and the 99 sentinel are the same thing
    with torch.no_grad():
        out = model(images, mags=mags)
    assert torch.isfinite(out).all()
    # rows 2 and 3 differ only in the mask: 99 (missing) vs 20.0 (observed, standardised to 0)
    with torch.no_grad():
        same_images = model(images[[2, 2]], mags=mags[[2, 3]])
    assert not torch.allclose(same_images[0], same_images[1])


def test_hybrid_normalisation_lives_in_the_checkpoint() -> None:
    model = create_model("hybrid-mags", n_mags=2)
    model.set_mag_normalization(np.array([19.0, 20.0]), np.array([0.5, 2.0]))
    state = model.state_dict()
    torch.testing.assert_close(state["mag_net.mag_mean"], torch.tensor([19.0, 20.0]))
    torch.testing.assert_close(state["mag_net.mag_std"], torch.tensor([0.5, 2.0]))
    with pytest.raises(ValueError, match="positive"):
        model.set_mag_normalization([19.0, 20.0], [0.5, 0.0])
    with pytest.raises(ValueError, match="2 finite numbers"):
        model.set_mag_normalization([19.0, 20.0, 21.0], [1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="no magnitude branch"):
        create_model("hybrid-images").set_mag_normalization([0.0] * 9, [1.0] * 9)


def test_hybrid_branches_and_heads() -> None:
    torch.manual_seed(0)
    images, mags = torch.randn(2, 4, 36, 36), 20 + torch.randn(2, 9)
    both, img_only, mag_only = (create_model(n) for n in ("hybrid", "hybrid-images", "hybrid-mags"))
    assert type(both) is type(img_only) is type(mag_only)  # one class, one branch switched off
    assert (img_only.use_images, img_only.use_mags, mag_only.use_images, mag_only.use_mags) == (
        True, False, False, True
    )  # fmt: skip
    assert img_only.mag_net is None and mag_only.cnn is None
    assert mag_only(None, mags=mags).shape == (2, 2)
    assert img_only(images).shape == (2, 2)
    # the combined model's head reads both feature vectors
    assert both.head.mlp[0].in_features == img_only.cnn.out_features + mag_only.mag_net.out_features
    assert both.output_kind == "regression"
    with pytest.raises(AttributeError):
        _ = both.n_bins
    with pytest.raises(ValueError, match="needs mags"):
        both(images)
    with pytest.raises(ValueError, match=r"shape \(B, 9\)"):
        both(images, mags=mags[:, :5])
    with pytest.raises(ValueError, match="at least one branch"):
        create_model("hybrid", use_images=False, use_mags=False)
    pdf = create_model("hybrid", head="pdf", n_bins=40, z_max=0.8)
    assert pdf.output_kind == "pdf" and pdf.n_bins == 40 and pdf(images, mags=mags).shape == (2, 40)
    with pytest.raises(ValueError, match="'pdf' or 'regression'"):
        create_model("hybrid", head="mixture")


def test_regression_output_is_on_the_redshift_scale() -> None:
    """(z, log sigma) = ((z_min + z_max)/2 + r0 (z_max - z_min)/2, log((z_max - z_min)/2) + r1)."""
    model = create_model("hybrid-mags", n_mags=2, z_min=0.1, z_max=0.5)
    last = model.head.mlp[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.5, -1.0]))
    out = model(None, mags=torch.tensor([[20.0, 21.0]]))
    torch.testing.assert_close(out, torch.tensor([[0.3 + 0.5 * 0.2, math.log(0.2) - 1.0]]))


# --------------------------------------------------------------------------------------------------
# multimodal (Ait Ouahmed et al. 2024)


def test_modality_bands() -> None:
    assert modality_bands(5) == [[0, 1], [1, 2], [2, 3], [3, 4]]  # u_g, g_r, r_i, i_z
    assert modality_bands(5, 2, 2) == [[0, 2], [1, 3], [2, 4]]  # u_r, g_i, r_z
    assert modality_bands(5, 3, 1) == [[0, 1, 2], [1, 2, 3], [2, 3, 4]]
    with pytest.raises(ValueError, match="cannot hold"):
        modality_bands(2, 2, 2)


def test_multimodal_stems_see_only_their_bands() -> None:
    """Early fusion: each modality's parallel stem depends only on its two bands."""
    torch.manual_seed(0)
    model = create_model("multimodal-small", n_bands=5, image_size=16).eval()
    assert model.n_modalities == 4 and model.stems.out_channels == 4 * model.modality_width
    x = torch.randn(1, 5, 16, 16)
    x_u = x.clone()
    x_u[:, 0] += 1.0  # change the u band only: only the u_g modality may react
    with torch.no_grad():
        a = model.stems(x.index_select(1, model.band_index))
        b = model.stems(x_u.index_select(1, model.band_index))
    changed = (a - b).abs().amax(dim=(0, 2, 3)).reshape(4, model.modality_width).amax(dim=1)
    assert changed[0] > 0 and torch.all(changed[1:] == 0)


def test_modality_mask_and_dropout() -> None:
    torch.manual_seed(0)
    model = create_model("multimodal-small", n_bands=5, image_size=16, modality_dropout=0.5)
    x, ebv = torch.randn(8, 5, 16, 16), torch.zeros(8)
    x_u = x.clone()
    x_u[:, 0] += 1.0
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x, ebv), model(x, ebv))  # no dropout at inference
        assert not torch.allclose(model(x, ebv), model(x_u, ebv))
        model.set_modality_mask([False, True, True, True])  # u_g off: the u band no longer matters
        torch.testing.assert_close(model(x, ebv), model(x_u, ebv))
        model.set_modality_mask(None)
        model.train()
        assert not torch.allclose(model(x, ebv), model(x, ebv))  # random modalities dropped
    weights = model._modality_weights(10_000, torch.device("cpu"))
    assert weights is not None and torch.all((weights > 0).sum(dim=1) >= 1)  # never all dropped
    torch.testing.assert_close(weights.sum(dim=1), torch.full((10_000,), 4.0))  # n / n_kept scaling
    assert (weights == 0).float().mean().item() == pytest.approx(0.5, abs=0.03)
    with pytest.raises(ValueError, match="at least one True"):
        model.set_modality_mask([False] * 4)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        create_model("multimodal-small", modality_dropout=1.0)


def test_multimodal_forward_64x64x5() -> None:
    """Full-size multimodal network (4 parallel 2-band stems + Table A.1 trunk) on one ugriz image."""
    torch.manual_seed(0)
    model = create_model("multimodal").eval()
    assert [len(m) for m in model.modalities] == [2, 2, 2, 2] and model.stems.out_channels == 256
    with torch.no_grad():
        out = model(torch.randn(1, 5, 64, 64), torch.tensor([0.05]))
    assert out.shape == (1, 180) and torch.isfinite(out).all()


def test_multimodal_explicit_modalities() -> None:
    model = create_model("multimodal-small", n_bands=4, image_size=16, modalities=[[0, 2], [1, 3]])
    assert model.n_modalities == 2 and model.band_index.tolist() == [0, 2, 1, 3]
    assert model.zpix_config["modalities"] == [[0, 2], [1, 3]]
    with pytest.raises(ValueError, match="outside"):
        create_model("multimodal-small", n_bands=4, modalities=[[0, 4]])


def test_regression_sigma_does_not_train_the_shared_features() -> None:
    """The log-sigma output reads detached features: its gradient reaches only its own output row."""
    from zpix.models.heads import RegressionHead

    head = RegressionHead(in_features=8, hidden=(16,))
    features = torch.randn(4, 8, requires_grad=True)
    head(features)[:, 1].sum().backward()
    assert features.grad is None or torch.count_nonzero(features.grad) == 0
    assert torch.count_nonzero(head.mlp[0].weight.grad) == 0
    assert torch.count_nonzero(head.mlp[-1].weight.grad[1]) > 0
    assert torch.count_nonzero(head.mlp[-1].weight.grad[0]) == 0
    head.zero_grad()
    features.grad = None
    head(features)[:, 0].sum().backward()
    assert torch.count_nonzero(features.grad) > 0
