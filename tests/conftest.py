"""Shared fixtures: tiny cube stores made on the fly, and the real data beside the project."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zpix.store.cube_store import CubeWriter

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real"


def write_toy_cubes(path: Path, n: int = 64, size: int = 16, bands: str = "ugriz", seed: int = 0,
                    with_mags: bool = True, chunk: int = 25) -> Path:
    """A cube store whose images carry their redshift: a Gaussian blob whose colour tracks z."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    blob = np.exp(-(xx**2 + yy**2) / (2 * (size / 8) ** 2)).astype(np.float32)
    nb = len(bands)
    with CubeWriter(path, bands=list(bands), image_shape=(size, size), pixel_scale_arcsec=0.396, survey="toy",
                    mag_names=list(bands) if with_mags else None) as writer:
        for start in range(0, n, chunk):
            m = min(chunk, n - start)
            z = rng.uniform(0.02, 0.38, m)
            slope = np.linspace(-1, 1, nb)[None, :] * (z[:, None] - 0.2) * 5
            flux = 10 ** (0.4 * slope)
            images = flux[:, :, None, None] * blob + rng.normal(0, 0.02, (m, nb, size, size))
            mags = 22.5 - 2.5 * np.log10(flux * blob.sum()) if with_mags else None
            writer.append(images.astype(np.float32), z, rng.uniform(0, 0.1, m), np.arange(start, start + m),
                          mags=mags, mag_errs=None if mags is None else np.full_like(mags, 0.02),
                          catalog={"r_mag": rng.uniform(14, 17.7, m)})
    return path


@pytest.fixture
def toy_cubes(tmp_path: Path) -> Path:
    return write_toy_cubes(tmp_path / "toy.h5")


@pytest.fixture(scope="session")
def real_data() -> Path:
    if not REAL_DATA.is_dir():
        pytest.skip("../shared/data/real is not available beside the project")
    return REAL_DATA
