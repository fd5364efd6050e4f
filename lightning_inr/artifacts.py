"""Files a run writes (reconstructions and expert maps) and their upload to W&B."""

from __future__ import annotations

from pathlib import Path

import numpy as np

# Distinct colours for experts (Tableau 20 order); more experts cycle through them.
PALETTE = np.array(
    [
        [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
        [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
        [174, 199, 232], [255, 187, 120], [152, 223, 138], [255, 152, 150], [197, 176, 213],
        [196, 156, 148], [247, 182, 210], [199, 199, 199], [219, 219, 141], [158, 218, 229],
    ],
    dtype=np.uint8,
)


def expert_colours(selected: np.ndarray) -> np.ndarray:
    """RGB uint8 colour of each point's expert."""
    return PALETTE[np.asarray(selected) % len(PALETTE)]


def save_png(image: np.ndarray, path: Path) -> Path:
    """Save an (H, W, 3|1) image in [0, 1] (float) or uint8 as PNG."""
    from PIL import Image

    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255 + 0.5).astype(np.uint8)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    Image.fromarray(image).save(path)
    return path


def save_wav(signal: np.ndarray, rate: int, path: Path) -> Path:
    """Save a mono float signal as 32-bit float WAV."""
    import soundfile

    soundfile.write(path, np.asarray(signal, dtype=np.float32), rate, subtype="FLOAT")
    return path


def save_waveform_by_expert(signal: np.ndarray, selected: np.ndarray, rate: int, path: Path) -> Path:
    """Plot a waveform with each sample coloured by its expert."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = np.arange(len(signal)) / rate
    colours = expert_colours(selected) / 255.0
    fig, ax = plt.subplots(figsize=(12, 3), dpi=100)
    ax.scatter(t, signal, c=colours, s=0.5, linewidths=0, rasterized=True)
    ax.set_xlabel("time [s]")
    ax.set_ylabel("amplitude")
    ax.set_xlim(t[0], t[-1] if len(t) > 1 else 1.0)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def save_ply(verts: np.ndarray, faces: np.ndarray, path: Path, vertex_colours: np.ndarray | None = None) -> Path:
    """Save a triangle mesh (optionally with per-vertex RGB colours) as PLY."""
    import trimesh

    mesh = trimesh.Trimesh(verts, faces, vertex_colors=vertex_colours, process=False)
    mesh.export(path)
    return path


def log_files_to_wandb(trainer, files: dict[str, Path]) -> None:
    """Upload written files to every W&B logger of ``trainer``: images, audio, meshes as 3-D points."""
    from lightning.pytorch.loggers import WandbLogger

    loggers = [lg for lg in trainer.loggers if isinstance(lg, WandbLogger)]
    if not loggers:
        return
    import wandb

    media = {}
    for key, path in files.items():
        suffix = path.suffix.lower()
        if suffix == ".png":
            media[f"outputs/{key}"] = wandb.Image(str(path))
        elif suffix == ".wav":
            media[f"outputs/{key}"] = wandb.Audio(str(path))
        elif suffix == ".ply":
            import trimesh

            mesh = trimesh.load(path, process=False)
            pts = np.asarray(mesh.vertices)
            colours = np.asarray(mesh.visual.vertex_colors)[:, :3] if mesh.visual.kind == "vertex" else None
            cloud = pts if colours is None else np.concatenate([pts, colours], axis=1)
            media[f"outputs/{key}"] = wandb.Object3D(cloud)
    for lg in loggers:
        lg.experiment.log(media)
        for path in files.values():
            lg.experiment.save(str(path), base_path=str(path.parent), policy="now")
