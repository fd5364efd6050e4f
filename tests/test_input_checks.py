"""Input checks: image bit depth and alpha, settings that would do nothing (errors before training, or a
warning), cancelling stereo channels, out-of-range image choices. Every fixture is written by the test."""

from __future__ import annotations

import struct
import warnings
import zlib
from pathlib import Path

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, TensorDataset

from datamodules import AudioSignal, FashionMNIST, ImageNet, ImageSignal
from datamodules.images import BadImageError, image_folder, load_image
from datamodules.loaders import make_loader
from lightning_mae import MAEPretraining, MaskedAutoencoderViT, SelfGuidedMasking

# ------------------------------------------------------------------------------------------- fixtures
GRADIENT = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit level once


def png16(path: Path, pixels: np.ndarray) -> Path:
    """Write a 16-bit PNG (grey, grey+alpha, RGB or RGBA). Pillow cannot write 16-bit colour PNGs and
    imageio's Pillow plugin refuses uint16 RGB, so the file is assembled here (PNG: zlib rows + CRCs)."""
    h, w = pixels.shape[:2]
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[channels]
    rows = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows))
                     + chunk(b"IEND", b""))
    return path


def colour16() -> np.ndarray:
    return np.stack([GRADIENT, GRADIENT[::-1], GRADIENT.T], axis=-1)


# ------------------------------------------------------------------------- bit depth: uint8 pipelines
def test_16bit_grey_png_is_scaled_to_8bit_not_saturated(tmp_path):
    path = tmp_path / "grey16.png"
    Image.fromarray(GRADIENT).save(path)
    assert Image.open(path).mode == "I;16"  # the fixture is a real 16-bit PNG
    expected = np.rint(GRADIENT / 257).astype(np.uint8)
    rgb = np.asarray(load_image(path))
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    assert (rgb == 255).mean() < 0.01  # was 99.6 %
    for c in range(3):
        assert np.array_equal(rgb[..., c], expected)  # v/257 rounded: within 1/255 of the 16-bit level
    assert np.array_equal(np.asarray(load_image(path, "L")), expected)


def test_16bit_colour_pngs_come_out_in_range(tmp_path):
    rgb = colour16()
    rgba = np.concatenate([rgb, np.full((256, 256, 1), 65535, np.uint16)], axis=-1)
    for name, pixels in (("rgb16.png", rgb), ("rgba16.png", rgba)):
        out = np.asarray(load_image(png16(tmp_path / name, pixels))).astype(np.int32)
        assert out.shape == (256, 256, 3)
        assert np.abs(out - rgb / 257).max() <= 1.0, name  # within 1/255 (Pillow keeps the high byte)


def test_8bit_images_load_as_before(tmp_path):
    """8-bit grey, RGB, RGBA and palette files give exactly Pillow's ``convert`` (the previous loader)."""
    rng = np.random.default_rng(0)
    images = {
        "l.png": Image.fromarray(rng.integers(0, 256, (20, 30), dtype=np.uint8)),
        "rgb.png": Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
        "rgba.png": Image.fromarray(rng.integers(0, 256, (20, 30, 4), dtype=np.uint8)),
        "p.png": Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)).quantize(16),
        "rgb.jpg": Image.fromarray(rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)),
    }
    for name, image in images.items():
        image.save(tmp_path / name)
        for mode in ("RGB", "L"):
            with Image.open(tmp_path / name) as reference:
                assert np.array_equal(np.asarray(load_image(tmp_path / name, mode)),
                                      np.asarray(reference.convert(mode))), (name, mode)


def test_alpha_is_dropped_and_palettes_give_their_colours(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:2, ..., 3] = 0  # top half fully transparent: its stored colour is kept, not composited
    rgba[2:, ..., 3] = 255
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    assert np.all(np.asarray(load_image(tmp_path / "rgba.png")) == (200, 100, 50))
    palette = Image.new("P", (4, 4), 1)
    palette.putpalette([0, 0, 0, 10, 220, 30] + [0] * 762)
    palette.save(tmp_path / "p.png")
    assert np.all(np.asarray(load_image(tmp_path / "p.png")) == (10, 220, 30))


def test_float_and_32bit_images(tmp_path):
    levels = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(levels).save(tmp_path / "f.tif")
    assert np.array_equal(np.asarray(load_image(tmp_path / "f.tif", "L")), np.rint(levels * 255).astype(np.uint8))
    Image.fromarray(levels * 2).save(tmp_path / "over.tif")
    with pytest.raises(BadImageError, match=r"over\.tif.*\[0, 2\].*\[0, 1\]"):
        load_image(tmp_path / "over.tif")
    Image.fromarray(np.full((4, 4), 70000, np.int32)).save(tmp_path / "i32.tif")
    with pytest.raises(BadImageError, match=r"i32\.tif.*\[0, 65535\]"):
        load_image(tmp_path / "i32.tif")


def test_imagefolder_dataset_reads_16bit_images(tmp_path):
    for cls in ("a", "b"):
        (tmp_path / cls).mkdir()
        Image.fromarray(GRADIENT).save(tmp_path / cls / "grey.png")
    dataset = image_folder(tmp_path, transform=lambda img: torch.from_numpy(np.array(img)))
    pixels, _ = dataset[0]
    assert pixels.shape == (256, 256, 3) and (pixels == 255).float().mean() < 0.01
    assert pixels.float().mean() == pytest.approx(127.5, abs=0.5)


# ------------------------------------------------------------------------- bit depth: ImageSignal
def test_image_signal_keeps_16bit_grey_precision(tmp_path):
    Image.fromarray(GRADIENT).save(tmp_path / "grey16.png")
    grey = ImageSignal(str(tmp_path / "grey16.png"), downsample=1, center_crop=False, grayscale=True)
    levels = (grey.image[..., 0].double() + 1) / 2
    assert grey.image.shape == (256, 256, 1)
    assert (levels - torch.from_numpy(GRADIENT / 65535)).abs().max() < 1 / 65535
    colour = ImageSignal(str(tmp_path / "grey16.png"), downsample=1, center_crop=False)
    assert colour.image.shape == (256, 256, 3) and torch.equal(colour.image[..., 1], grey.image[..., 0])
    small = ImageSignal(str(tmp_path / "grey16.png"), downsample=4, grayscale=True)  # Lanczos on floats
    assert small.image.shape == (64, 64, 1) and -1 <= small.image.min() and small.image.max() <= 1
    assert small.image.mean().item() == pytest.approx(0.0, abs=0.01)  # mid-grey on average, not white


def test_image_signal_16bit_colour_is_in_range(tmp_path):
    path = png16(tmp_path / "rgb16.png", colour16())
    data = ImageSignal(str(path), downsample=1, center_crop=False)
    levels = ((data.image.double() + 1) / 2).numpy()
    assert np.abs(levels - colour16() / 65535).max() <= 1 / 255 + 1e-6


def test_image_signal_8bit_images_are_bit_identical(tmp_path):
    """The previous pipeline, written out: convert, Lanczos in 8 bits, crop, / 255."""
    rng = np.random.default_rng(1)
    for name, pixels in (("rgb.png", rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)),
                         ("l.png", rng.integers(0, 256, (40, 60), dtype=np.uint8)),
                         ("rgba.png", rng.integers(0, 256, (40, 60, 4), dtype=np.uint8))):
        Image.fromarray(pixels).save(tmp_path / name)
        for grayscale in (False, True):
            data = ImageSignal(str(tmp_path / name), downsample=2, grayscale=grayscale)
            img = Image.open(tmp_path / name).convert("L" if grayscale else "RGB")
            img = img.resize((30, 20), resample=Image.LANCZOS).crop((5, 0, 25, 20))
            expected = np.asarray(img, dtype=np.float32) / 255.0
            expected = torch.from_numpy(expected if expected.ndim == 3 else expected[..., None]) * 2 - 1
            assert torch.equal(data.image, expected), (name, grayscale)


# ------------------------------------------------------------------------- ImageSignal: which image
def test_image_index_or_name_out_of_range_says_what_the_folder_holds(tmp_path):
    for i in range(24):
        Image.fromarray(np.full((4, 4, 3), i, np.uint8)).save(tmp_path / f"img_{i:02d}.png")
    with pytest.raises(FileNotFoundError, match=r"'99'.* holds 24 images.*0 to 23.*img_00\.png") as err:
        ImageSignal(str(tmp_path), image="99", downsample=1)
    assert "19 more" in str(err.value)
    with pytest.raises(FileNotFoundError, match=r"holds 24 images"):
        ImageSignal(str(tmp_path), image=99, downsample=1)  # an int from Python
    with pytest.raises(FileNotFoundError, match=r"'nope\.png' not found.*holds 24 images: img_00\.png.*img_09\.png"):
        ImageSignal(str(tmp_path), image="nope.png", downsample=1)
    assert ImageSignal(str(tmp_path), image=23, downsample=1, center_crop=False).image.shape == (4, 4, 3)


# ------------------------------------------------------------------------------------------- audio
def write_wav(path: Path, channels: np.ndarray, rate: int = 8000) -> Path:
    import soundfile

    soundfile.write(path, channels, rate, subtype="FLOAT")
    return path


def test_cancelling_stereo_warns_and_channel_picks_one(tmp_path):
    t = np.linspace(0, 1, 800, dtype=np.float32)
    left = 0.5 * np.sin(40 * t)
    path = write_wav(tmp_path / "phase.wav", np.stack([left, -0.99 * left], axis=1))
    with pytest.warns(UserWarning, match=r"phase\.wav.*channels cancel.*channel 0"):
        AudioSignal(str(path))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        first = AudioSignal(str(path), channel=0)
        second = AudioSignal(str(path), channel=1)
    np.testing.assert_allclose(first.signal[:, 0].numpy(), left / np.abs(left).max(), atol=1e-6)
    np.testing.assert_allclose(second.signal[:, 0].numpy(), -left / np.abs(left).max(), atol=1e-6)
    with pytest.raises(ValueError, match=r"channel=2.*2 channel\(s\)"):
        AudioSignal(str(path), channel=2)
    exact = write_wav(tmp_path / "exact.wav", np.stack([left, -left], axis=1))  # the mix is exactly 0
    with pytest.raises(ValueError, match=r"exact\.wav.*silent.*channel=0"):
        AudioSignal(str(exact))


def test_mono_and_ordinary_stereo_are_unchanged(tmp_path):
    t = np.linspace(0, 1, 800, dtype=np.float32)
    stereo = np.stack([0.5 * np.sin(20 * t), 0.3 * np.sin(20 * t + 0.5)], axis=1).astype(np.float32)
    for name, data in (("mono.wav", stereo[:, :1]), ("stereo.wav", stereo)):
        path = write_wav(tmp_path / name, data)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            signal = AudioSignal(str(path), max_samples=700).signal
        import soundfile

        read = soundfile.read(str(path), dtype="float32", always_2d=True)[0]
        mono = read.mean(axis=1)[:700]  # the previous recipe
        assert torch.equal(signal, torch.from_numpy(mono / float(np.abs(mono).max())).float().unsqueeze(-1))


# ----------------------------------------------------------------------------- data that trains 0 steps
def fmnist_files(root: Path, n: int = 40) -> Path:
    from tests.test_mae_data import fmnist_fixture

    return fmnist_fixture(root, n_train=n, n_test=n)


def test_train_subset_smaller_than_the_batch_is_an_error(tmp_path):
    from datamodules.classification.fashion_mnist import FashionMNISTClassification

    with pytest.raises(ValueError, match=r"train_subset=100 is smaller than batch_size=256.*0 steps"):
        FashionMNIST(data_dir=str(tmp_path), batch_size=256, train_subset=100)
    with pytest.raises(ValueError, match=r"train_subset=4 is smaller than batch_size=8"):
        FashionMNISTClassification(str(tmp_path), batch_size=8, train_subset=4)


def test_a_training_loader_with_no_batch_is_an_error(tmp_path):
    dm = FashionMNIST(data_dir=str(fmnist_files(tmp_path, n=20)), batch_size=32, num_workers=0)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"training set has 20 samples, fewer than batch_size=32.*0 steps"):
        dm.train_dataloader()
    data = TensorDataset(torch.zeros(5, 1))
    with pytest.raises(ValueError, match=r"5 samples, fewer than batch_size=8"):
        make_loader(data, 8, 0, shuffle=True, drop_last=True)
    assert len(make_loader(data, 8, 0, shuffle=True, drop_last=False)) == 1  # a partial batch is kept
    with pytest.raises(ValueError, match=r"training set is empty"):
        make_loader(TensorDataset(torch.zeros(0, 1)), 8, 0, shuffle=True, drop_last=False)


def test_imagenet_batch_checks(tmp_path):
    from tests.test_mae_data import imagefolder_fixture

    with pytest.raises(ValueError, match=r"batch_size must be >= 1, got 0"):
        ImageNet(data_dir=str(tmp_path), batch_size=0)
    dm = ImageNet(data_dir=str(imagefolder_fixture(tmp_path)), batch_size=8, num_workers=0, img_size=32)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"6 samples, fewer than batch_size=8"):
        dm.train_dataloader()


def test_streaming_shards_smaller_than_a_batch_are_an_error(tmp_path):
    from datamodules.pretraining.streaming import StreamingImageNet, convert_image_folder
    from tests.test_streaming import write_image_folder

    shards = tmp_path / "shards" / "train"
    convert_image_folder(write_image_folder(tmp_path / "src"), shards, seed=0, num_workers=1, verbose=False)
    dm = StreamingImageNet(str(shards), batch_size=32, num_workers=0, img_size=16)
    dm.setup("fit")
    with pytest.raises(ValueError, match=r"hold 24 samples, too few for one batch of batch_size=32"):
        dm.train_dataloader()


# ------------------------------------------------------------------------------------ MAE settings
def backbone(**kw) -> MaskedAutoencoderViT:
    args = dict(img_size=28, patch_size=4, in_chans=1, embed_dim=32, depth=2, num_heads=2,
                decoder_embed_dim=16, decoder_depth=1, decoder_num_heads=2) | kw
    return MaskedAutoencoderViT(**args)


def test_mask_ratio_that_leaves_no_visible_patch_is_an_error():
    with pytest.raises(ValueError, match=r"mask_ratio=0\.99 leaves 0 of the 49 patches visible.*mask_ratio <= 0\.9795"):
        MAEPretraining(backbone(), SelfGuidedMasking(mask_ratio=0.99))
    MAEPretraining(backbone(), SelfGuidedMasking(mask_ratio=0.9795))  # exactly one visible patch
    for ratio in (1.0, 0.0, -0.5):
        with pytest.raises(ValueError, match=r"mask_ratio must be in \(0, 1\)"):
            SelfGuidedMasking(mask_ratio=ratio)


def test_other_impossible_model_settings_are_single_clear_errors():
    with pytest.raises(ValueError, match=r"source_layer=3 exceeds the encoder depth 2: use 0 to 2"):
        MAEPretraining(backbone(), SelfGuidedMasking(source_layer=3))
    with pytest.raises(ValueError, match=r"patch_size=5 does not divide img_size=28"):
        backbone(patch_size=5)


@pytest.mark.parametrize(("start_epoch", "warns"), [(2, True), (5, True), (1, False), (None, False)])
def test_start_epoch_past_the_last_epoch_warns_once(tmp_path, start_epoch, warns):
    module = MAEPretraining(backbone(), SelfGuidedMasking(start_epoch=start_epoch, tau="mean"), warmup_epochs=1)
    loader = DataLoader(TensorDataset(torch.randn(8, 1, 28, 28)), batch_size=4)
    trainer = pl.Trainer(accelerator="cpu", max_epochs=2, limit_train_batches=1, limit_val_batches=0, logger=False,
                         enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=tmp_path)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer.fit(module, loader)
    messages = [str(w.message) for w in caught if "informed masking will never start" in str(w.message)]
    if warns:
        assert messages == [
            f"masking.start_epoch={start_epoch} >= trainer.max_epochs=2: informed masking will never start, so this "
            "run is plain MAE (random masks only); set start_epoch below 2 "
            "(--model.init_args.masking.init_args.start_epoch) or raise trainer.max_epochs, or set "
            "start_epoch: null to train plain MAE on purpose"
        ]
    else:
        assert messages == []


def test_auto_start_that_cannot_switch_in_time_warns(tmp_path):
    module = MAEPretraining(backbone(), SelfGuidedMasking(start_epoch="auto", auto_min_epoch=3), warmup_epochs=1)
    module.trainer = pl.Trainer(accelerator="cpu", max_epochs=3, logger=False, enable_progress_bar=False)
    with pytest.warns(UserWarning, match=r"start_epoch='auto' with auto_min_epoch=3 >= trainer.max_epochs=3"):
        module.on_fit_start()
