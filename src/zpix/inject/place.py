"""Where injected galaxies go in a frame: inside it, off saturated stars, never on each other.

Positions are drawn uniformly in the reference (r) frame's pixels and kept one by one (random
sequential adsorption) when

* in every band the position, carried through the WCS, lies at least ``margin`` pixels inside
  that band's frame (the stamp's half-size plus the resampling kernel's reach, so every cutout is
  fully covered);
* the galaxy's rendered box touches no saturated pixel (grown around bleed trails and halos,
  :meth:`zpix.inject.psf.Frame.saturated`) in any band;
* its cutout stamp overlaps no other injected galaxy's stamp: Chebyshev distance ≥ ``stamp``
  pixels from every position already kept in this copy of the frame.
"""

from __future__ import annotations

import numpy as np


def place(n: int, *, ref_shape: tuple[int, int], band_maps: list, stamp: int, render: int, margin: int,
          rng: np.random.Generator, max_tries: int = 200) -> np.ndarray:
    """Up to ``n`` positions (x, y) in the reference frame's 0-based pixels, in the order drawn.

    ``band_maps`` holds, per band, ``(to_band, saturated, shape)``: a function mapping reference
    pixel arrays (x, y) to that band's pixels, the summed-area table of its grown saturation map
    (:func:`integral`, or None) and the band frame's shape.
    Fewer than ``n`` come back when the frame is full (``max_tries`` × ``n`` draws at most).
    """
    ny, nx = ref_shape
    kept: list[tuple[float, float]] = []
    half_r = render // 2
    tries = 0
    while len(kept) < n and tries < max_tries * max(n, 1):
        batch = 256
        tries += batch
        xs = rng.uniform(margin, nx - 1 - margin, batch)
        ys = rng.uniform(margin, ny - 1 - margin, batch)
        ok = np.ones(batch, bool)
        for to_band, sat, (bny, bnx) in band_maps:
            bx, by = to_band(xs, ys)
            ok &= (bx >= margin) & (bx <= bnx - 1 - margin) & (by >= margin) & (by <= bny - 1 - margin)
            if sat is not None and sat[-1, -1] > 0:
                # any saturated pixel inside the render box: the summed-area table makes this O(1)
                sat_sum = sat
                ix, iy = np.round(bx).astype(int), np.round(by).astype(int)
                x0, x1 = np.clip(ix - half_r, 0, bnx), np.clip(ix + half_r + 1, 0, bnx)
                y0, y1 = np.clip(iy - half_r, 0, bny), np.clip(iy + half_r + 1, 0, bny)
                count = sat_sum[y1, x1] - sat_sum[y0, x1] - sat_sum[y1, x0] + sat_sum[y0, x0]
                ok &= count == 0
        for x, y in zip(xs[ok], ys[ok], strict=True):
            if len(kept) >= n:
                break
            if kept:
                k = np.asarray(kept)
                if np.any(np.maximum(np.abs(k[:, 0] - x), np.abs(k[:, 1] - y)) < stamp):
                    continue
            kept.append((float(x), float(y)))
    return np.asarray(kept, np.float64).reshape(-1, 2)


def integral(mask: np.ndarray) -> np.ndarray:
    """Summed-area table of a boolean map, with a zero first row and column."""
    s = np.zeros((mask.shape[0] + 1, mask.shape[1] + 1), np.int64)
    s[1:, 1:] = np.cumsum(np.cumsum(mask, axis=0), axis=1)
    return s
