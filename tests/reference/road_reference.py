"""ROAD's noisy linear imputation written literally from Rong et al. (ICML 2022), as a slow oracle.

One unknown per removed pixel and channel; for removed pixel i, over its in-image 8-neighbours j with
weight 1/6 (sharing an edge) or 1/12 (sharing a corner):

    sum_j w_ij (x_j - x_i) = 0

Known x_j go to the right-hand side. The system is assembled entry by entry in a scipy.sparse matrix
and solved exactly (LU, spsolve).
"""

from __future__ import annotations

import numpy as np
from scipy.sparse import lil_matrix
from scipy.sparse.linalg import spsolve


def neighbour_weight(dy: int, dx: int) -> float:
    if (dy, dx) == (0, 0):
        return 0.0
    return 1 / 6 if dy == 0 or dx == 0 else 1 / 12


def literal_imputation(image: np.ndarray, removed: np.ndarray) -> np.ndarray:
    """``image`` (C, H, W), ``removed`` (H, W) bool -> the image with removed pixels imputed (no noise)."""
    channels, height, width = image.shape
    unknowns = [(y, x) for y in range(height) for x in range(width) if removed[y, x]]
    index = {pixel: k for k, pixel in enumerate(unknowns)}
    matrix = lil_matrix((len(unknowns), len(unknowns)))
    rhs = np.zeros((len(unknowns), channels))
    for k, (y, x) in enumerate(unknowns):
        for dy in (-1, 0, 1):
            for dx in (-1, 0, 1):
                ny, nx = y + dy, x + dx
                w = neighbour_weight(dy, dx)
                if w == 0 or not (0 <= ny < height and 0 <= nx < width):
                    continue
                matrix[k, k] = matrix[k, k] - w  # -w x_i
                if removed[ny, nx]:
                    matrix[k, index[(ny, nx)]] = matrix[k, index[(ny, nx)]] + w  # +w x_j, unknown
                else:
                    rhs[k] -= w * image[:, ny, nx]  # +w x_j, known: moved to the right
    solution = np.asarray(spsolve(matrix.tocsc(), rhs)).reshape(len(unknowns), channels)
    out = image.astype(np.float64).copy()
    for k, (y, x) in enumerate(unknowns):
        out[:, y, x] = solution[k]
    return out
