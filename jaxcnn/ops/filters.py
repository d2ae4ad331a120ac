"""The classical 3x3 image kernels, as read-only float32 arrays of shape ``(3, 3)``.

They are cross-correlation kernels (the orientation ``conv2d`` uses). To apply
one to a single-channel NHWC image: ``conv2d(img, SOBEL_X[:, :, None, None])``.

==================  ===============================================================
name                what it does
==================  ===============================================================
identity            returns the image
sharpen             centre minus its 4-neighbours, plus the image
blur                3x3 box mean
sobel_x             horizontal gradient (responds to vertical edges)
sobel_y             vertical gradient (responds to horizontal edges)
laplacian           4-neighbour discrete Laplacian (edges of any orientation)
horizontal_edge     second difference along rows: responds to horizontal lines
vertical_edge       second difference along columns: responds to vertical lines
emboss              directional relief from top-left to bottom-right
surround            sum of the 8 neighbours, centre excluded
==================  ===============================================================
"""

from __future__ import annotations

import numpy as np


def _kernel(rows, scale=1.0):
    k = np.asarray(rows, np.float32) * np.float32(scale)
    k.setflags(write=False)
    return k


IDENTITY = _kernel([[0, 0, 0], [0, 1, 0], [0, 0, 0]])
SHARPEN = _kernel([[0, -1, 0], [-1, 5, -1], [0, -1, 0]])
BLUR = _kernel([[1, 1, 1], [1, 1, 1], [1, 1, 1]], 1 / 9)
SOBEL_X = _kernel([[-1, 0, 1], [-2, 0, 2], [-1, 0, 1]])
SOBEL_Y = _kernel([[-1, -2, -1], [0, 0, 0], [1, 2, 1]])
LAPLACIAN = _kernel([[0, 1, 0], [1, -4, 1], [0, 1, 0]])
HORIZONTAL_EDGE = _kernel([[0, -1, 0], [0, 2, 0], [0, -1, 0]])
VERTICAL_EDGE = _kernel([[0, 0, 0], [-1, 2, -1], [0, 0, 0]])
EMBOSS = _kernel([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]])
SURROUND = _kernel([[1, 1, 1], [1, 0, 1], [1, 1, 1]])

FILTERS: dict[str, np.ndarray] = {
    "identity": IDENTITY,
    "sharpen": SHARPEN,
    "blur": BLUR,
    "sobel_x": SOBEL_X,
    "sobel_y": SOBEL_Y,
    "laplacian": LAPLACIAN,
    "horizontal_edge": HORIZONTAL_EDGE,
    "vertical_edge": VERTICAL_EDGE,
    "emboss": EMBOSS,
    "surround": SURROUND,
}


def get(name: str) -> np.ndarray:
    """The kernel called ``name`` (one of ``FILTERS``)."""
    try:
        return FILTERS[name]
    except KeyError:
        raise ValueError(f"unknown filter {name!r}; known filters: {', '.join(FILTERS)}") from None
