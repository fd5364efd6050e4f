"""benchmarks.paper_tables: the command of each fit, the table and curves it writes, its input checks, and one
real fit end to end (reused, not rerun, the second time)."""

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile

from benchmarks import paper_tables as pt

REPO = Path(__file__).resolve().parents[1]


def namespace(tmp_path: Path, **kwargs) -> argparse.Namespace:
    base = {"steps": 10, "val_every": 5, "manager_steps": 7, "audio_seconds": 0.5, "seed": 0,
            "runs": str(tmp_path / "runs"), "out": str(tmp_path / "out")}
    return argparse.Namespace(**{**base, **kwargs})


def test_every_table_names_existing_configs_and_the_metrics_it_shows():
    for name, table in pt.TABLES.items():
        assert table.metric in table.columns, name
        for method in table.methods:
            assert (REPO / method.config).is_file(), (name, method.config)
    # the ablations: the four conditionings and K = 2, 8, 16 (K = 4 is the cat row), each with its own manager
    rows = [m.name for m in pt.TABLES["ablations"].methods]
    assert rows == ["conditioning none", "conditioning max", "conditioning mean", "conditioning cat", "K = 2",
                    "K = 8", "K = 16"]
    assert all(m.own_manager for m in pt.TABLES["ablations"].methods)


def test_the_command_of_a_fit(tmp_path):
    args = namespace(tmp_path)
    finer_moe = next(m for m in pt.TABLES["variants"].methods if m.name == "FINER Neural Experts")
    cmd = pt.command("variants", finer_moe, Path("data/kodak"), "kodim19.png", tmp_path / "r", args)
    assert cmd[:3] == ["fit", "--config", "experiments/inr_image.yaml"]
    assert "--model.init_args.network.init_args.activation=finer" in cmd
    assert "--data.init_args.image=kodim19.png" in cmd and "--trainer.max_steps=10" in cmd
    assert "--data.init_args.steps_per_epoch=5" in cmd  # a validation, i.e. a point of the curve, every 5 steps
    # a manager of its own (the shipped one has sine experts), pretrained once for this shape and budget
    manager = tmp_path / "runs" / "managers" / "image_finer_neural_experts_7.pt"
    assert f"--model.init_args.manager_checkpoint={manager}" in cmd and "--model.init_args.manager_steps=7" in cmd
    siren = pt.TABLES["kodak"].methods[0]
    assert not any("manager" in c for c in pt.command("kodak", siren, Path("k"), "kodim01.png", tmp_path, args))
    # audio: the first audio_seconds of the clip, in samples at its own rate
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, np.zeros(16000, dtype="float32"), 8000)
    ne = next(m for m in pt.TABLES["audio"].methods if m.name == "Neural Experts")
    audio = pt.command("audio", ne, tmp_path, "clip.wav", tmp_path, args)
    assert "--data.init_args.max_samples=4000" in audio and f"--data.init_args.path={clip}" in audio


def test_curves_are_read_at_the_number_of_steps_done(tmp_path):
    csv = tmp_path / "metrics.csv"
    csv.write_text("epoch,step,train/loss,val/psnr\n0,4,1.0,\n0,4,,20.5\n1,9,,22.0\n")
    assert pt.read_curve(csv, "val/psnr") == [(5, 20.5), (10, 22.0)]
    assert pt.read_curve(tmp_path / "missing.csv", "val/psnr") == []


def test_the_table_shows_means_once_complete_and_per_method_columns_once(tmp_path):
    args = namespace(tmp_path)
    out = tmp_path / "out"
    out.mkdir()
    table = pt.TABLES["kodak"]
    fit = {"command": "lightning fit …", "wall_seconds": 3.0, "parameters": 1000, "seconds_per_step": 0.5,
           "threads": "1"}
    results = {
        "SIREN": {s: {**fit, "psnr": p, "ssim": 0.5} for s, p in zip(table.signals, (20.0, 22.0, 27.0))},
        "Neural Experts": {table.signals[0]: {**fit, "psnr": 30.0, "ssim": 0.9}},
    }
    text = pt.write_table("kodak", table, results, args, out)
    assert (out / "kodak.md").read_text() == text
    rows = {line.split(" | ")[0].strip("| "): line for line in text.splitlines() if line.startswith("| ")}
    assert rows["SIREN"].count("1,000") == 1 and "| 23.00 |" in rows["SIREN"]  # the mean of 20, 22, 27
    assert rows["Neural Experts"].split(" | ")[7] == "–"  # no mean until every image is done
    assert rows["SIREN wider"].count("–") == 9  # 6 per image, the mean, parameters, s/step
    assert "10 reconstruction steps per fit" in text and "threads per fit: 1" in text
    assert pt.plot("kodak", table, {"SIREN": {s: {"curve": [[5, 1.0], [10, 2.0]]} for s in table.signals}}, out)
    assert (out / "kodak.png").stat().st_size > 0


def test_bad_inputs_are_named(tmp_path, capsys):
    (tmp_path / "kodak").mkdir()
    with pytest.raises(SystemExit):
        pt.main(["kodak", "--kodak", str(tmp_path / "kodak"), "--runs", str(tmp_path / "r"), "--out", str(tmp_path)])
    assert "missing kodim01.png, kodim19.png, kodim23.png" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pt.main(["kodak", "--kodak", str(tmp_path / "nowhere")])
    assert "nowhere" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        pt.main(["variants", "--methods", "FINNER", "--kodak", str(REPO / "datamodules/signals/samples/kodak")])
    assert "--methods FINNER: not in the variants table" in capsys.readouterr().err


@pytest.mark.slow
def test_one_fit_end_to_end_and_reused(tmp_path, monkeypatch):
    kodak = tmp_path / "kodak"
    kodak.mkdir()
    shutil.copy(REPO / "datamodules/signals/samples/kodak/kodim19.png", kodak)
    monkeypatch.chdir(REPO)  # the configs are named relative to the repository, as `make paper-variants` runs it
    argv = ["variants", "--methods", "FINER", "--steps", "4", "--val-every", "2", "--kodak", str(kodak),
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]
    pt.main(argv)
    result = json.loads(next((tmp_path / "runs").rglob("result.json")).read_text())
    assert result["steps"] == 4 and [step for step, _ in result["curve"]] == [2, 4]
    assert result["parameters"] == 99_843 and result["seconds_per_step"] > 0
    text = (tmp_path / "out" / "variants.md").read_text()
    assert f"| FINER | {result['psnr']:.2f} |" in text and (tmp_path / "out" / "variants.png").is_file()

    def no_fit(*args, **kwargs):
        raise AssertionError("a finished fit must be reused")

    monkeypatch.setattr(pt.subprocess, "run", no_fit)
    pt.main(argv)


def test_a_table_is_rebuilt_from_the_fits_kept_beside_it_without_rerunning(tmp_path, monkeypatch, capsys):
    """A fresh clone has no runs/: the committed <table>.json alone rebuilds the table and its curves, and
    --methods runs only the rows named while the table keeps showing the others."""
    kodak = REPO / "datamodules/signals/samples/kodak"
    args = namespace(tmp_path, steps=500, manager_steps=500)
    variants = pt.TABLES["variants"]
    out = tmp_path / "out"
    out.mkdir()
    fits = {}
    for i, method in enumerate(variants.methods[:-1]):  # every row but the last is kept
        fits[pt.fit_key("variants", method, "kodim19.png", args)] = {
            "psnr": 20.0 + i, "ssim": 0.5, "parameters": 1000, "seconds_per_step": 0.1, "threads": "1",
            "wall_seconds": 9.0, "command": f"lightning fit {method.name}", "curve": [[250, 19.0], [500, 20.0 + i]]}
    (out / "variants.json").write_text(json.dumps({"table": "variants", "fits": fits}))
    ran = []
    monkeypatch.setattr(pt.subprocess, "run", lambda cmd, **kw: ran.append(cmd))
    argv = ["variants", "--methods", "FINER", "--steps", "500", "--kodak", str(kodak), "--runs",
            str(tmp_path / "runs"), "--out", str(out)]
    pt.main(argv)
    assert ran == []  # FINER is kept: nothing runs
    text = (out / "variants.md").read_text()
    assert "| FINER | 20.00 |" in text and "| Softplus + FF wider | 27.00 |" in text
    assert "| Softplus + FF Neural Experts | – |" in text  # not kept, not named: shown missing, not run
    assert (out / "variants.png").is_file()
    # another budget is another fit: it is not taken from the 500-step ones
    with pytest.raises(FileNotFoundError):  # the stubbed fit writes no metrics.json
        pt.main([*argv[:4], "300", *argv[5:]])
    assert len(ran) == 1 and "--trainer.max_steps=300" in ran[0]
    # a damaged file is named, not overwritten
    (out / "variants.json").write_text("{not json")
    with pytest.raises(SystemExit, match="variants.json: not a fits file"):
        pt.main(argv)
    assert (out / "variants.json").read_text() == "{not json"
