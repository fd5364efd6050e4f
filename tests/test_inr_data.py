"""DataModules of the INR signals: image, audio, SDF samples (real data from ../shared/data)."""

from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AudioSignal, ImageSignal, SDFSamples

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def test_kodak_paper_recipe_gives_128_square():
    data = ImageSignal(str(DATA / "kodak"), image="kodim19.png", downsample=4, center_crop=True)
    assert data.image.shape == (128, 128, 3)
    assert data.coords.shape == (128 * 128, 2)
    assert data.coords.min() == -1 and data.coords.max() == 1
    assert -1 <= data.image.min() and data.image.max() <= 1
    batch = data.train_batch()
    assert batch["values"].shape == (128 * 128, 3)


def test_image_from_folder_index_file_and_skimage_name(tmp_path):
    from PIL import Image

    first = ImageSignal(str(DATA / "kodak"), downsample=8)  # first file of the folder
    assert first.image.shape[:2] == (64, 64)
    Image.fromarray(np.full((10, 20, 3), 255, np.uint8)).save(tmp_path / "white.png")
    white = ImageSignal(str(tmp_path / "white.png"), downsample=1, center_crop=False)
    assert white.image.shape == (10, 20, 3) and torch.all(white.image == 1)
    cam = ImageSignal("camera", downsample=8, grayscale=True)  # skimage.data, shipped with the wheel
    assert cam.image.shape == (64, 64, 1) and cam.out_dim == 1


def test_image_errors_name_the_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="no_such_image"):
        ImageSignal(str(tmp_path / "no_such_image.png"))
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match="broken.png"):
        ImageSignal(str(tmp_path / "broken.png"))
    with pytest.raises(ValueError, match="downsample"):
        ImageSignal(str(DATA / "kodak"), downsample=0)


def test_audio_clip_is_normalised_on_time_coordinates():
    data = AudioSignal(str(DATA / "audio" / "gt_bach.wav"))
    assert data.rate == 44100 and data.signal.shape == (308_207, 1)
    assert data.signal.abs().max().item() == pytest.approx(1.0)
    assert data.coords[0].item() == -100 and data.coords[-1].item() == 100


def test_stereo_audio_is_mixed_to_mono(tmp_path):
    import soundfile

    t = np.linspace(0, 1, 800, dtype=np.float32)
    stereo = np.stack([0.5 * np.sin(20 * t), 0.1 * np.ones_like(t)], axis=1)
    soundfile.write(tmp_path / "s.wav", stereo, 8000, subtype="FLOAT")
    data = AudioSignal(str(tmp_path / "s.wav"))
    mono = stereo.mean(1)
    np.testing.assert_allclose(data.signal[:, 0].numpy(), mono / np.abs(mono).max(), atol=1e-6)
    (tmp_path / "bad.wav").write_bytes(b"RIFF....garbage")
    with pytest.raises(ValueError, match="bad.wav"):
        AudioSignal(str(tmp_path / "bad.wav"))
    with pytest.raises(FileNotFoundError, match="missing.wav"):
        AudioSignal(str(tmp_path / "missing.wav"))


def test_sdf_samples_of_a_sphere_have_correct_signs(tmp_path):
    import trimesh

    trimesh.creation.icosphere(subdivisions=4, radius=2.0).export(tmp_path / "sphere.obj")
    data = SDFSamples(str(tmp_path / "sphere.obj"), n_surface=100, n_near=200, n_far=300, surface_samples=20_000)
    batch = data.train_batch()
    assert batch["surface"].shape == (100, 3) and batch["points"].shape == (500, 3) and batch["sdf"].shape == (500,)
    # normalised: a unit sphere; the signed distance is |x| − 1 (up to sampling density)
    assert batch["surface"].norm(dim=-1).sub(1).abs().max() < 0.02  # flat facets of the icosphere
    exact = batch["points"].norm(dim=-1) - 1
    assert (batch["sdf"] - exact).abs().max() < 0.04
    grid = data.gt_sdf_grid(16)
    assert grid.shape == (16, 16, 16) and grid[8, 8, 8] < 0 < grid[0, 0, 0]
    assert data.train_batch()["points"].ne(batch["points"]).any()  # resampled every step


def test_real_mesh_loads_normalised():
    data = SDFSamples(str(DATA / "meshes" / "bunny.off"), n_surface=10, n_near=10, n_far=10, surface_samples=5000)
    assert np.abs(data.points).max() == pytest.approx(1.0)


def test_unusable_meshes_raise_clear_errors(tmp_path):
    (tmp_path / "points.off").write_text("OFF\n3 0 0\n0 0 0\n1 0 0\n0 1 0\n")
    with pytest.raises(ValueError, match="points.off"):
        SDFSamples(str(tmp_path / "points.off"))
    (tmp_path / "garbage.ply").write_bytes(b"\x00\x01garbage")
    with pytest.raises(ValueError, match="garbage.ply"):
        SDFSamples(str(tmp_path / "garbage.ply"))
    with pytest.raises(FileNotFoundError, match="nothing.off"):
        SDFSamples(str(tmp_path / "nothing.off"))
