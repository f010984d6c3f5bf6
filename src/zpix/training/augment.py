"""Dihedral data augmentation: the 8 symmetries of the square, the dihedral group D4.

Pasquet et al. (2019, Sect. 3.3 and 4.1) augment the training images with flips and 90 degree
rotations: a galaxy's redshift does not depend on how its cutout is oriented on the sky, and the
PSF and pixel grid are (nearly) invariant under these 8 operations.

D4 = { R^r F^f : r in 0..3, f in 0..1 },  |D4| = 8,  with R a 90 degree rotation and F a mirror.
Element ``k`` (0..7) of this module is ``r = k % 4`` rotations by 90 degrees counter-clockwise in the
(row, column) display of the array (``torch.rot90(x, r, dims=(-2, -1))``), followed, when
``f = k // 4`` is 1, by a left-right flip of the last axis.  k = 0 is the identity.

Every element is also a product T^t A^a B^b of a transpose T (swap H and W), a flip A of the rows and
a flip B of the columns, applied in that order; that form lets :func:`random_dihedral` transform each
sample of a batch differently with three ``torch.where`` and no Python loop.  All functions act on
the last two axes of tensors (..., H, W) and work on any device.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Number of elements of D4.
ORDER = 8

# k -> (t, a, b): element k equals "transpose if t, then flip rows if a, then flip columns if b".
# Derived from rot90: R = T then A; R^2 = A B; R^3 = T then B; F R^r follows by adding B (mod 2).
_TAB: tuple[tuple[int, int, int], ...] = (
    (0, 0, 0),  # identity
    (1, 1, 0),  # R    (90 deg)
    (0, 1, 1),  # R^2  (180 deg)
    (1, 0, 1),  # R^3  (270 deg)
    (0, 0, 1),  # F          (left-right mirror)
    (1, 1, 1),  # F R        (anti-diagonal mirror)
    (0, 1, 0),  # F R^2      (up-down mirror)
    (1, 0, 0),  # F R^3      (transpose, main-diagonal mirror)
)


def _matrix(k: int) -> tuple[tuple[int, int], tuple[int, int]]:
    """2x2 signed permutation M_k with (g_k x)(p) = x(M_k p) for centred pixel coordinates p = (i, j).

    M = T^t A^a B^b with T = [[0, 1], [1, 0]], A = diag(-1, 1), B = diag(1, -1): applying op o1 then
    o2 gives y(p) = x(O1 O2 p), so matrices multiply in the order the operations are applied.
    """
    t, a, b = _TAB[k]
    m = ((0, 1), (1, 0)) if t else ((1, 0), (0, 1))
    sa, sb = (-1 if a else 1), (-1 if b else 1)
    # right-multiplying by diag(sa, sb) scales the columns
    return ((m[0][0] * sa, m[0][1] * sb), (m[1][0] * sa, m[1][1] * sb))


def _mul(p: tuple[tuple[int, int], ...], q: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    return tuple(tuple(sum(p[i][m] * q[m][j] for m in range(2)) for j in range(2)) for i in range(2))


_INDEX = {_matrix(k): k for k in range(ORDER)}
#: COMPOSE[k1][k2] is the element equal to applying k1 first, then k2.
COMPOSE: tuple[tuple[int, ...], ...] = tuple(
    tuple(_INDEX[_mul(_matrix(k1), _matrix(k2))] for k2 in range(ORDER)) for k1 in range(ORDER)
)
#: INVERSE[k] undoes element k: rotations by 90 and 270 degrees swap, the rest are involutions.
INVERSE: tuple[int, ...] = tuple(next(j for j in range(ORDER) if COMPOSE[k][j] == 0) for k in range(ORDER))


def _check_k(k: int) -> int:
    if not 0 <= int(k) < ORDER:
        raise ValueError(f"dihedral element k must be in 0..7, got {k}")
    return int(k)


def dihedral(x: Tensor, k: int) -> Tensor:
    """Apply element ``k`` of D4 (``k % 4`` quarter turns, then a left-right flip if ``k >= 4``)
    to the last two axes of ``x``.  Odd rotations of non-square images swap H and W."""
    t, a, b = _TAB[_check_k(k)]
    if t:
        x = x.transpose(-2, -1)
    dims = [d for d, on in ((-2, a), (-1, b)) if on]
    return x.flip(dims) if dims else x.clone()


def dihedral_inverse(x: Tensor, k: int) -> Tensor:
    """Undo :func:`dihedral`: ``dihedral_inverse(dihedral(x, k), k) == x``."""
    return dihedral(x, INVERSE[_check_k(k)])


def compose(k1: int, k2: int) -> int:
    """The element equal to applying ``k1`` and then ``k2`` (the group law of D4)."""
    return COMPOSE[_check_k(k1)][_check_k(k2)]


def random_dihedral(
    batch: Tensor, generator: torch.Generator | None = None, return_k: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Apply an independent, uniformly drawn element of D4 to every sample of ``batch`` (B, ..., H, W).

    Vectorised: the per-sample choice k is turned into its (transpose, row flip, column flip) bits and
    each bit selects between two whole-batch tensors with ``torch.where``.  ``generator`` (on the
    batch's device) makes the draw reproducible; ``return_k=True`` also returns the drawn k (B,)
    so that the transforms can be undone with :func:`dihedral_inverse`.
    """
    if batch.ndim < 3:
        raise ValueError(f"random_dihedral needs a batch (B, ..., H, W), got shape {tuple(batch.shape)}")
    if batch.shape[-1] != batch.shape[-2]:
        raise ValueError(
            f"per-sample 90 degree rotations need square images, got H x W = {tuple(batch.shape[-2:])}"
        )
    n = batch.shape[0]
    k = torch.randint(0, ORDER, (n,), generator=generator, device=batch.device)
    bits = torch.tensor(_TAB, device=batch.device, dtype=torch.bool)[k]  # (B, 3)
    shape = (n,) + (1,) * (batch.ndim - 1)
    out = torch.where(bits[:, 0].reshape(shape), batch.transpose(-2, -1), batch)
    out = torch.where(bits[:, 1].reshape(shape), out.flip(-2), out)
    out = torch.where(bits[:, 2].reshape(shape), out.flip(-1), out)
    return (out, k) if return_k else out
