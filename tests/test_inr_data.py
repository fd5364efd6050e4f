"""DataModules of the INR signals: image, audio, SDF samples (the samples bundled in the package, and
fixtures the tests write themselves)."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from datamodules import AudioSignal, ImageSignal, SDFSamples
from datamodules.signals import download
from datamodules.signals.base import SAMPLES, resolve_path

BUNDLED = {"kodak/kodim19.png": 671_476, "audio/gt_bach.wav": 1_232_886, "meshes/bunny.off": 2_613_072}


@pytest.fixture
def elsewhere(tmp_path, monkeypatch):
    """Run from a folder that has no samples/ of its own: ``samples/...`` must find the bundled files."""
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def image_folder(tmp_path):
    """Three PNGs of different sizes, written from skimage.data (shipped inside the wheel)."""
    import skimage.data
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for name in ("astronaut", "chelsea", "coffee"):  # 512×512, 451×300, 600×400 (w×h)
        Image.fromarray(getattr(skimage.data, name)()).save(folder / f"{name}.png")
    return folder


def test_bundled_samples_are_the_reference_files():
    """Byte-identical to the reference copies (the checksums the downloader records), so the tensors are
    those of the full data sets' files; and found next to the package's code (installed copies too)."""
    import datamodules.signals.base as base

    assert SAMPLES == Path(base.__file__).resolve().parent / "samples"
    recorded = {f.target: f.sha256 for f in download.FILES}
    for name, size in BUNDLED.items():
        data = (SAMPLES / name).read_bytes()
        assert len(data) == size and hashlib.sha256(data).hexdigest() == recorded[name], name
    readme = (SAMPLES / "README.md").read_text()
    assert all(Path(name).name in readme and recorded[name] in readme for name in BUNDLED)


def test_kodak_paper_recipe_gives_128_square(elsewhere):
    data = ImageSignal("samples/kodak", image="kodim19.png", downsample=4, center_crop=True)
    assert data.image.shape == (128, 128, 3)
    assert data.coords.shape == (128 * 128, 2)
    assert data.coords.min() == -1 and data.coords.max() == 1
    assert -1 <= data.image.min() and data.image.max() <= 1
    batch = data.train_batch()
    assert batch["values"].shape == (128 * 128, 3)
    # kodim19 (768×512 → 192×128 → 128×128): known statistics and pixels, in [−1, 1]
    assert data.image.double().mean().item() == pytest.approx(-0.0312412, abs=1e-6)
    assert data.image.double().std().item() == pytest.approx(0.3757817, abs=1e-6)
    torch.testing.assert_close(data.image[0, 0], torch.tensor([-0.3176470, -0.2078431, -0.1294118]))
    torch.testing.assert_close(data.image[64, 64], torch.tensor([0.0823530, -0.0352941, -0.2627451]))
    # the bundled folder itself (absolute) gives the same tensor
    same = ImageSignal(str(SAMPLES / "kodak"), image="kodim19.png")
    assert torch.equal(same.image, data.image)


def test_image_from_folder_index_file_and_skimage_name(tmp_path, image_folder):
    from PIL import Image

    first = ImageSignal(str(image_folder), downsample=8)  # first file of the folder: astronaut, 512×512
    assert first.image.shape[:2] == (64, 64)
    second = ImageSignal(str(image_folder), image="1", downsample=1, center_crop=False)  # chelsea
    assert second.image.shape == (300, 451, 3)
    named = ImageSignal(str(image_folder), image="coffee.png", downsample=1, center_crop=False)
    assert named.image.shape == (400, 600, 3)
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
        ImageSignal("samples/kodak", downsample=0)
    with pytest.raises(FileNotFoundError, match="kodim01.png.*make data-inr"):
        ImageSignal("samples/kodak", image="kodim01.png")  # only kodim19 is bundled


def test_samples_resolve_to_the_bundled_folder_from_anywhere(elsewhere):
    assert resolve_path("samples/kodak") == SAMPLES / "kodak"
    assert resolve_path("samples/audio/gt_bach.wav") == SAMPLES / "audio" / "gt_bach.wav"
    assert resolve_path("samples/meshes/bunny.off") == SAMPLES / "meshes" / "bunny.off"
    # a samples/ folder of the working directory comes first
    own = elsewhere / "samples" / "audio" / "gt_bach.wav"
    own.parent.mkdir(parents=True)
    own.write_bytes(b"x")
    assert resolve_path("samples/audio/gt_bach.wav") == Path("samples/audio/gt_bach.wav")
    # only a relative path whose first part is samples/ falls back to the bundled folder
    with pytest.raises(FileNotFoundError):
        resolve_path("kodak/kodim19.png")
    with pytest.raises(FileNotFoundError):
        resolve_path(str(elsewhere / "nowhere" / "samples" / "kodak"))


@pytest.mark.parametrize("make", [
    lambda: ImageSignal("samples/kodak/kodim07.png"),
    lambda: AudioSignal("samples/audio/gt_counting.wav"),
    lambda: SDFSamples("samples/meshes/armadillo.off"),
], ids=["image", "audio", "sdf"])
def test_missing_sample_names_value_both_places_and_make_data_inr(elsewhere, make):
    with pytest.raises(FileNotFoundError) as info:
        make()
    message = str(info.value)
    value = message.split("'")[1]
    assert value.startswith("samples/")
    assert str(elsewhere / value) in message  # looked from the working directory
    assert str(SAMPLES / value.removeprefix("samples/")) in message  # and in the bundled folder
    assert "make data-inr" in message


def test_audio_clip_is_normalised_on_time_coordinates(elsewhere):
    data = AudioSignal("samples/audio/gt_bach.wav")
    assert data.rate == 44100 and data.signal.shape == (308_207, 1)
    assert data.signal.abs().max().item() == pytest.approx(1.0)
    assert data.coords[0].item() == -100 and data.coords[-1].item() == 100
    # gt_bach: float WAV already peaking at 1; known statistics
    assert data.scale == pytest.approx(1.0)
    assert data.signal.double().mean().item() == pytest.approx(-1.38532e-05, abs=1e-9)
    assert data.signal.double().abs().mean().item() == pytest.approx(0.1105970, abs=1e-6)


def test_synthetic_clip_keeps_its_rate_and_shape(tmp_path):
    import soundfile

    rate = 16000
    t = np.arange(int(0.25 * rate), dtype=np.float32) / rate
    clip = 0.4 * np.sin(2 * np.pi * 440 * t) + 0.1 * np.sin(2 * np.pi * 1250 * t)
    soundfile.write(tmp_path / "tone.wav", clip, rate, subtype="FLOAT")
    data = AudioSignal(str(tmp_path / "tone.wav"), max_samples=1000)
    assert data.rate == rate and data.signal.shape == (1000, 1)
    np.testing.assert_allclose(data.signal[:, 0].numpy(), clip[:1000] / np.abs(clip[:1000]).max(), atol=1e-6)


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


def test_sdf_samples_give_surface_normals_and_optional_uniform_points(tmp_path):
    import trimesh

    trimesh.creation.icosphere(subdivisions=4, radius=2.0).export(tmp_path / "sphere.obj")
    common = {"n_surface": 100, "n_near": 200, "n_far": 300, "surface_samples": 20_000}
    plain = SDFSamples(str(tmp_path / "sphere.obj"), **common).train_batch()
    data = SDFSamples(str(tmp_path / "sphere.obj"), n_uniform=400, **common)
    batch = data.train_batch()
    # the normals of the surface points: unit, and on a sphere along the position
    assert batch["normals"].shape == (100, 3)
    torch.testing.assert_close(batch["normals"].norm(dim=-1), torch.ones(100))
    assert torch.nn.functional.cosine_similarity(batch["normals"], batch["surface"]).min() > 0.99
    # uniform points come last, in the cube; the official recipe's stream is unchanged before them
    assert batch["points"].shape == (900, 3) and batch["sdf"].shape == (900,)
    assert batch["points"][500:].abs().max() <= data.bound
    assert torch.equal(batch["surface"], plain["surface"]) and torch.equal(batch["points"][:500], plain["points"])
    siren = SDFSamples(str(tmp_path / "sphere.obj"), n_surface=50, n_near=0, n_far=0, n_uniform=50,
                       surface_samples=20_000).train_batch()
    assert siren["points"].shape == (50, 3) and siren["sdf"].shape == (50,)
    with pytest.raises(ValueError, match="off-surface"):
        SDFSamples(str(tmp_path / "sphere.obj"), n_near=0, n_far=0, surface_samples=2000)


def test_real_mesh_loads_normalised(elsewhere):
    data = SDFSamples("samples/meshes/bunny.off", n_surface=10, n_near=10, n_far=10, surface_samples=5000)
    assert np.abs(data.points).max() == pytest.approx(1.0)
    assert len(data.mesh.vertices) == 37_706 and len(data.mesh.faces) == 75_408 and data.mesh.is_watertight
    np.testing.assert_allclose(data.center, [-0.0618705, -0.1120587, 0.0642565], atol=1e-6)


def test_off_mesh_written_by_trimesh_loads(tmp_path):
    import trimesh

    trimesh.creation.box(extents=(2.0, 1.0, 0.5)).export(tmp_path / "box.off")
    data = SDFSamples(str(tmp_path / "box.off"), n_surface=10, n_near=10, n_far=10, surface_samples=2000)
    assert len(data.mesh.faces) == 12 and data.mesh.is_watertight
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
