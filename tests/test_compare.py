"""``python -m lightning_mae.analysis.compare``: overlay of the runs' clustering curves."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from lightning_mae.analysis.compare import main, read_curves


def _metrics(folder: Path, gaps: list[float]) -> Path:
    folder.mkdir(parents=True)
    rows = ["checkpoint,epoch,gap/enc1,kl_last/enc1,gap/enc2,kl_last/enc2"]
    rows += [f"e{i}.ckpt,{i},{g},{1.0 / (i + 1)},{2 * g},nan" for i, g in enumerate(gaps)]
    (folder / "metrics.csv").write_text("\n".join(rows) + "\n")
    return folder


def test_read_curves_picks_the_layer_and_drops_nan(tmp_path):
    folder = _metrics(tmp_path / "a", [0.1, 0.2, 0.3])
    curves = read_curves(folder, 2)
    assert curves["gap"] == [(0, 0.2), (1, 0.4), (2, 0.6)] and curves["kl_last"] == []
    assert read_curves(folder, 1)["kl_last"][1] == (1, 0.5)


def test_compare_writes_a_figure_and_names_bad_input(tmp_path):
    a, b = _metrics(tmp_path / "a", [0.1, 0.2]), _metrics(tmp_path / "b", [0.0, 0.3])
    out = main(["--run", f"MAE={a}", "--run", f"SG-MAE={b}", "--start", "SG-MAE=1", "--layer", "1",
                "--out", str(tmp_path / "c.png")])
    assert Image.open(out).size[0] > 500
    with pytest.raises(FileNotFoundError, match="nowhere"):
        read_curves(tmp_path / "nowhere", 1)
    with pytest.raises(KeyError, match="enc9"):
        read_curves(a, 9)
    with pytest.raises(SystemExit):
        main(["--run", "no-equals-sign", "--layer", "1", "--out", str(tmp_path / "d.png")])


def test_the_attention_gap_is_drawn_when_the_runs_have_it(tmp_path):
    folder = tmp_path / "new"
    folder.mkdir()
    folder.joinpath("metrics.csv").write_text("checkpoint,epoch,gap/enc1,gap_attn/enc1,kl_last/enc1\n"
                                              "e0.ckpt,0,0.1,0.01,0.5\ne1.ckpt,1,0.2,0.03,0.0\n")
    assert read_curves(folder, 1)["gap_attn"] == [(0, 0.01), (1, 0.03)]
    old = _metrics(tmp_path / "old", [0.1, 0.2])  # written before gap_attn existed: no such column
    assert "gap_attn" not in read_curves(old, 1)
    wide = main(["--run", f"new={folder}", "--run", f"old={old}", "--layer", "1", "--out", str(tmp_path / "w.png")])
    narrow = main(["--run", f"old={old}", "--layer", "1", "--out", str(tmp_path / "n.png")])
    assert Image.open(wide).size[0] > Image.open(narrow).size[0]  # three panels instead of two
