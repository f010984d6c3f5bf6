"""The dihedral group D4 of zpix.training.augment: definition, inverses, group law, per-sample draws."""

from __future__ import annotations

import itertools

import pytest
import torch

from zpix.training.augment import (
    COMPOSE,
    INVERSE,
    ORDER,
    compose,
    dihedral,
    dihedral_inverse,
    random_dihedral,
)


@pytest.fixture
def image() -> torch.Tensor:
    """A generic (asymmetric) 2-band 5x5 image: no non-trivial symmetry maps it to itself."""
    return torch.arange(2 * 5 * 5, dtype=torch.float32).reshape(2, 5, 5) ** 1.5


def reference(x: torch.Tensor, k: int) -> torch.Tensor:
    """The documented definition: k % 4 quarter turns (rot90), then a left-right flip if k >= 4."""
    y = torch.rot90(x, k % 4, dims=(-2, -1))
    return y.flip(-1) if k >= 4 else y


@pytest.mark.parametrize("k", range(ORDER))
def test_matches_rotation_then_flip_definition(image: torch.Tensor, k: int) -> None:
    assert torch.equal(dihedral(image, k), reference(image, k))


def test_eight_distinct_transforms(image: torch.Tensor) -> None:
    outs = [dihedral(image, k) for k in range(ORDER)]
    for i, j in itertools.combinations(range(ORDER), 2):
        assert not torch.equal(outs[i], outs[j]), (i, j)


@pytest.mark.parametrize("k", range(ORDER))
def test_inverse_restores_input(image: torch.Tensor, k: int) -> None:
    assert torch.equal(dihedral_inverse(dihedral(image, k), k), image)
    assert torch.equal(dihedral(dihedral_inverse(image, k), k), image)


def test_inverse_table() -> None:
    # quarter turns swap, everything else (half turn and the four mirrors) is its own inverse
    assert INVERSE == (0, 3, 2, 1, 4, 5, 6, 7)


def test_group_closure_and_law(image: torch.Tensor) -> None:
    outs = [dihedral(image, k) for k in range(ORDER)]
    for k1, k2 in itertools.product(range(ORDER), repeat=2):
        twice = dihedral(dihedral(image, k1), k2)
        matches = [k for k in range(ORDER) if torch.equal(twice, outs[k])]
        assert matches == [compose(k1, k2)], (k1, k2, matches)
    # each row and column of the Cayley table is a permutation (Latin square), identity is 0
    for k in range(ORDER):
        assert sorted(COMPOSE[k]) == list(range(ORDER))
        assert sorted(row[k] for row in COMPOSE) == list(range(ORDER))
        assert COMPOSE[0][k] == COMPOSE[k][0] == k
    # D4 is not abelian: a quarter turn and a mirror do not commute
    assert compose(1, 4) != compose(4, 1)


def test_random_dihedral_per_sample() -> None:
    batch = torch.randn(64, 3, 6, 6)
    gen = torch.Generator().manual_seed(1)
    out, k = random_dihedral(batch, generator=gen, return_k=True)
    assert out.shape == batch.shape and k.shape == (64,)
    assert len(set(k.tolist())) == ORDER  # fixed seed: all 8 elements are drawn
    for i in range(batch.shape[0]):
        assert torch.equal(out[i], dihedral(batch[i], int(k[i])))
        assert torch.equal(dihedral_inverse(out[i], int(k[i])), batch[i])
    # same seed, same draw; tensor-only return by default
    again = random_dihedral(batch, generator=torch.Generator().manual_seed(1))
    assert torch.equal(again, out)


def test_random_dihedral_works_on_channels_last_and_keeps_dtype() -> None:
    batch = torch.randn(8, 5, 4, 4, dtype=torch.float64).to(memory_format=torch.channels_last)
    out, k = random_dihedral(batch, generator=torch.Generator().manual_seed(0), return_k=True)
    assert out.dtype == torch.float64
    for i in range(8):
        assert torch.equal(out[i], dihedral(batch[i], int(k[i])))


def test_errors() -> None:
    with pytest.raises(ValueError, match="0..7"):
        dihedral(torch.zeros(3, 3), 8)
    with pytest.raises(ValueError, match="square"):
        random_dihedral(torch.zeros(2, 1, 3, 4))
    with pytest.raises(ValueError, match="batch"):
        random_dihedral(torch.zeros(3, 3))
