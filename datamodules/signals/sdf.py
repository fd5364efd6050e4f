"""Signed-distance samples of a mesh (OFF/PLY/OBJ/STL via trimesh), resampled at every step."""

from __future__ import annotations

import warnings

import numpy as np
import torch

from datamodules.signals.base import SignalDataModule, resolve_path


def load_mesh(path: str):
    """A non-empty triangle mesh from ``path`` (see ``resolve_path``); a clear error for anything else."""
    import trimesh

    p = resolve_path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path {path!r}: {p} is not a mesh file")
    try:
        mesh = trimesh.load(str(p), force="mesh", process=True)
    except Exception as err:
        raise ValueError(f"mesh file {path} cannot be read by trimesh: {err}") from err
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0 or mesh.area <= 0:
        raise ValueError(f"mesh file {path} holds no triangles with area: an SDF needs a surface mesh")
    if not mesh.is_watertight:
        warnings.warn(
            f"mesh {path} is not watertight: inside/outside signs near holes are unreliable", stacklevel=2
        )
    return mesh


def cube_grid(resolution: int, bound: float) -> torch.Tensor:
    """(R³, 3) grid points on [−bound, bound]³ in (x, y, z) 'ij' order (matches marching cubes)."""
    lin = torch.linspace(-bound, bound, resolution)
    return torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)


class SDFSamples(SignalDataModule):
    """Samples of a mesh's signed distance in normalised coordinates (centred, max |x| = 1).

    Each training step draws ``n_surface`` surface points (target 0, with their face normals), ``n_near``
    of them jittered with Laplace noise of scale ``near_scale``, ``n_far`` with scale ``far_scale`` and
    ``n_uniform`` points uniform in the cube [−bound, bound]³ (SIREN's off-surface samples); the
    target of a point is the distance to the nearest of ``surface_samples`` dense surface samples,
    signed by that sample's face normal (as in the official code).

    A batch: ``surface`` (n_surface, 3), ``normals`` (n_surface, 3, unit), ``points`` (near, far, then
    uniform points, 3) and ``sdf`` (their targets).

    Args:
        path: the mesh file; ``samples/meshes/bunny.off`` is the Stanford bunny bundled in the package.
        n_surface, n_near, n_far: points per step (official 10k each).
        near_scale, far_scale: Laplace scales of the jitter (official 0.002 and 0.2).
        n_uniform: off-surface points per step uniform in the cube (0 in the official recipe; SIREN's
            recipe: as many as surface points, and no near/far ones).
        surface_samples: dense surface samples defining the distance (and the metrics' true surface).
        bound: the evaluation / pretraining cube is [−bound, bound]³.
        pretrain_resolution: manager pretraining uses a grid of this many points per axis.
        steps_per_epoch: training steps per epoch.
        seed: seed of the dense surface sampling.
    """

    in_dim = 3
    out_dim = 1

    def __init__(
        self,
        path: str,
        n_surface: int = 10_000,
        n_near: int = 10_000,
        n_far: int = 10_000,
        near_scale: float = 0.002,
        far_scale: float = 0.2,
        surface_samples: int = 250_000,
        bound: float = 1.1,
        pretrain_resolution: int = 32,
        steps_per_epoch: int = 100,
        seed: int = 0,
        n_uniform: int = 0,
    ) -> None:
        super().__init__(steps_per_epoch)
        import trimesh
        from scipy.spatial import cKDTree

        for name, value in [("n_surface", n_surface), ("surface_samples", surface_samples)]:
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        for name, value in [("n_near", n_near), ("n_far", n_far), ("n_uniform", n_uniform)]:
            if value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        if n_near + n_far + n_uniform < 1:
            raise ValueError("n_near + n_far + n_uniform must be >= 1: the losses need off-surface points")
        self.path = path
        self.n_surface, self.n_near, self.n_far = n_surface, n_near, n_far
        self.near_scale, self.far_scale, self.n_uniform = near_scale, far_scale, n_uniform
        self.bound, self.pretrain_resolution = bound, pretrain_resolution
        mesh = load_mesh(path)
        points, faces = trimesh.sample.sample_surface(mesh, surface_samples, seed=seed)
        self.center = points.mean(axis=0)
        self.scale = float(np.abs(points - self.center).max())
        self.points = ((points - self.center) / self.scale).astype(np.float32)
        self.normals = mesh.face_normals[faces].astype(np.float32)
        self.mesh = mesh.copy()
        self.mesh.apply_translation(-self.center)
        self.mesh.apply_scale(1.0 / self.scale)
        self._tree = cKDTree(self.points)
        self._rng = np.random.default_rng(seed)
        self._grid_cache: dict[int, np.ndarray] = {}
        self._surface_cache: dict[int, np.ndarray] = {}

    def signed_distance(self, query: np.ndarray) -> np.ndarray:
        """Distance to the nearest dense surface sample, signed by that sample's normal."""
        dist, idx = self._tree.query(query, workers=-1)
        sign = np.sign(np.einsum("ij,ij->i", query - self.points[idx], self.normals[idx]))
        return (dist * np.where(sign == 0, 1.0, sign)).astype(np.float32)

    def train_batch(self) -> dict:
        rng = self._rng
        n_all = len(self.points)
        on = rng.integers(0, n_all, self.n_surface)
        surface = self.points[on]
        near = self.points[rng.integers(0, n_all, self.n_near)]
        near = near + rng.laplace(scale=self.near_scale, size=near.shape)
        far = self.points[rng.integers(0, n_all, self.n_far)]
        far = far + rng.laplace(scale=self.far_scale, size=far.shape)
        parts = [near, far]
        if self.n_uniform:  # drawn last: without them the random stream is the official recipe's
            parts.append(rng.uniform(-self.bound, self.bound, size=(self.n_uniform, 3)))
        off = np.concatenate(parts).astype(np.float32)
        return {
            "surface": torch.from_numpy(surface),
            "normals": torch.from_numpy(self.normals[on]),
            "points": torch.from_numpy(off),
            "sdf": torch.from_numpy(self.signed_distance(off)),
        }

    def grid_coords(self, resolution: int) -> torch.Tensor:
        return cube_grid(resolution, self.bound)

    def gt_sdf_grid(self, resolution: int) -> np.ndarray:
        """The reference SDF on the evaluation grid, (R, R, R) (cached per resolution)."""
        if resolution not in self._grid_cache:
            grid = self.grid_coords(resolution).numpy()
            self._grid_cache[resolution] = self.signed_distance(grid).reshape((resolution,) * 3)
        return self._grid_cache[resolution]

    def gt_surface_points(self, n: int) -> np.ndarray:
        """``n`` fresh samples of the true (normalised) surface, for Chamfer / Hausdorff."""
        import trimesh

        if n not in self._surface_cache:
            pts, _ = trimesh.sample.sample_surface(self.mesh, n, seed=1)
            self._surface_cache[n] = np.asarray(pts, dtype=np.float32)
        return self._surface_cache[n]

    def pretraining_coords(self) -> torch.Tensor:
        return cube_grid(self.pretrain_resolution, self.bound)

    def pretraining_values(self) -> torch.Tensor:
        sdf = self.signed_distance(self.pretraining_coords().numpy())
        return torch.from_numpy(sdf).unsqueeze(-1)
