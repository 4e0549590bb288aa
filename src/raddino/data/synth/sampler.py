"""Fast trilinear sampling of a volume on CPU: y-planes stacked into one 2D image.

PyTorch's 2D ``grid_sample`` is vectorised on CPU, its 3D version is not (about six times
slower per point). A (C, Z, Y, X) volume stored as a (2C, Y * Z, X) image, row ``y * Z + z``
holding the channels of plane y and then those of plane y + 1, has z and x adjacent in each
y-plane: one bilinear 2D lookup interpolates both planes in (x, z), and blending the two by the
fraction of y gives exact trilinear interpolation.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


class PlaneStack:
    """A volume and its label map, sampled at voxel-index coordinates x, y, z (same shapes).

    channels: (C, Z, Y, X) float32; labels: (Z, Y, X) uint8. Outside the grid, channels repeat
    the border voxel in x and z and are read from the first or last plane in y (the caller pads
    with air); labels are 0 (the label planes carry a border of zeros).
    """

    def __init__(self, channels: np.ndarray, labels: np.ndarray) -> None:
        c, z, y, x = channels.shape
        self.shape = (z, y, x)
        planes = np.ascontiguousarray(np.asarray(channels).transpose(0, 2, 1, 3))
        self.image = torch.from_numpy(planes).reshape(1, c, y * z, x)
        self._groups: dict[tuple[int, ...], torch.Tensor] = {}
        padded = np.pad(np.asarray(labels, dtype=np.float32), ((1, 1), (1, 1), (0, 0)))
        label_planes = np.ascontiguousarray(padded.transpose(1, 0, 2))
        self.label_image = torch.from_numpy(label_planes).reshape(1, 1, (y + 2) * (z + 2), x)

    def group(self, channels: tuple[int, ...]) -> torch.Tensor:
        """(1, 2 * len(channels), Y * Z, X): ``channels`` of plane y, then of plane y + 1, in the
        rows of plane y (the last plane is paired with itself); cached."""
        if channels not in self._groups:
            z, y, x = self.shape
            planes = self.image[0, list(channels)].view(len(channels), y, z, x)
            following = torch.cat([planes[:, 1:], planes[:, -1:]], dim=1)
            pairs = torch.cat([planes, following]).reshape(1, 2 * len(channels), y * z, x)
            self._groups[channels] = pairs.contiguous()
        return self._groups[channels]

    def trilinear(
        self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor, channels: tuple[int, ...]
    ) -> torch.Tensor:
        """Voxel coordinates (...) -> (len(channels), ...) interpolated channels."""
        z_size, y_size, width = self.shape
        image = self.group(channels)
        y0 = y.floor().clamp_(0, y_size - 2)
        weight = (y - y0).clamp_(0.0, 1.0)
        rows = y_size * z_size
        grid = torch.empty((*x.shape, 2))
        torch.mul(x, 2.0 / (width - 1), out=grid[..., 0]).sub_(1.0)
        row = grid[..., 1]
        torch.add(z.clamp(0, z_size - 1), y0, alpha=z_size, out=row)
        row.mul_(2.0 / (rows - 1)).sub_(1.0)
        both = F.grid_sample(
            image, grid.view(1, 1, -1, 2), "bilinear", "border", align_corners=True
        )
        low, high = both.view(2, len(channels), *x.shape).unbind(0)
        return low.lerp_(high, weight)

    def labels(self, x: torch.Tensor, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """Voxel coordinates (...) -> (...) uint8 label of the nearest voxel (0 outside)."""
        z_size, y_size, width = self.shape
        rows = (y_size + 2) * (z_size + 2)
        grid = torch.empty((*x.shape, 2))
        torch.mul(x, 2.0 / (width - 1), out=grid[..., 0]).sub_(1.0)
        row = grid[..., 1]
        ry = (y + 1.0).round_().clamp_(0, y_size + 1)
        torch.add((z + 1.0).round_().clamp_(0, z_size + 1), ry, alpha=z_size + 2, out=row)
        row.mul_(2.0 / (rows - 1)).sub_(1.0)
        out = F.grid_sample(
            self.label_image, grid.view(1, 1, -1, 2), "nearest", "zeros", align_corners=True
        )
        return out.view(x.shape).to(torch.uint8)
