"""Errors of the `lightning` command (lightning_run.cli.main, lightning_run.errors): a mistake in the input is one
`error:` line and a `hint:` line with exit code 2, a bug keeps its traceback (exit code 1), a run failing before
its first step leaves no run directory or W&B run behind; a full disk, a truncated checkpoint, malformed YAML and
a checkpoint of the other method name what is wrong."""

from __future__ import annotations

import errno
import io
from pathlib import Path

import pytest
import torch
import yaml

from lightning_run.checkpoint_io import AtomicCheckpointIO, atomic_torch_save
from lightning_run.cli import cli, condense_parser_message, main
from lightning_run.errors import ConfigError, mark_started, report
from lightning_run.guards import NonFiniteLossError
from lightning_run.resume import read_meta
from tests.conftest import EXPERIMENTS
from tests.test_run_resume import WANDB, run, tiny_config

DEMO = EXPERIMENTS / "sgmae_fmnist.yaml"


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LIGHTNING_DEBUG", raising=False)
    return tmp_path


def lightning(capfd: pytest.CaptureFixture, *args: str) -> tuple[int, list[str], str]:
    """``lightning <args>`` in this process: exit code, its error/hint lines, all of stderr."""
    capfd.readouterr()
    code = main(list(args))
    err = capfd.readouterr().err
    return code, [line for line in err.splitlines() if line.startswith(("error:", "hint:"))], err


# --- 4. one line for a mistake, a traceback for a bug ------------------------------------------------------
@pytest.mark.parametrize("args, message", [
    (["--model.init_args.width", "0"], "error: --model.init_args.width: width must be >= 1, got 0"),
    (["--data.init_args.batch_size", "-1"], "error: --data.init_args.batch_size: batch_size must be >= 1, got -1"),
    (["--ckpt_path", "nope.ckpt"], "error: --ckpt_path nope.ckpt: no such file"),
    (["--trainer.max_epochs", "x"], "error: --trainer.max_epochs: "),
    (["--model.init_args.widht", "3"], "error: --model.init_args.widht is not an option of "
                                       "tests.test_run_resume.TinyModel"),
], ids=["model_init", "data_init", "missing_ckpt", "parse_type", "parse_typo"])
def test_a_mistake_in_the_input_is_one_line_and_exit_code_2(in_tmp, capfd, args, message):
    code, lines, err = lightning(capfd, "fit", "--config", str(tiny_config(in_tmp)), *args)
    assert code == 2
    assert len(lines) == 2 and lines[0].startswith(message) and lines[1].startswith("hint: ")
    assert "Traceback" not in err and "usage:" not in err
    assert not (in_tmp / "runs").exists()  # nothing written


def test_debug_shows_the_traceback(in_tmp, capfd, monkeypatch):
    config = str(tiny_config(in_tmp))
    code, lines, err = lightning(capfd, "fit", "--config", config, "--model.init_args.width", "0", "--debug")
    assert code == 2 and "Traceback" in err and "ValueError: width must be >= 1, got 0" in err
    assert lines[0] == "error: --model.init_args.width: width must be >= 1, got 0"
    monkeypatch.setenv("LIGHTNING_DEBUG", "1")
    code, _, err = lightning(capfd, "fit", "--config", config, "--ckpt_path", "nope.ckpt")
    assert code == 2 and "Traceback" in err


def test_a_bug_keeps_its_traceback_and_exit_code_1(in_tmp, capfd):
    # A ValueError is a user error before the first step, a bug once steps run.
    code, lines, err = lightning(capfd, "fit", "--config", str(tiny_config(in_tmp, fail_at="step")))
    assert code == 1 and not lines
    assert "Traceback" in err and "ValueError: a bug in training_step" in err


def test_user_errors_are_exceptions_for_callers_of_cli(in_tmp):
    with pytest.raises(ValueError, match="width must be >= 1, got 0"):  # the class's own exception, unwrapped
        cli(["fit", "--config", str(tiny_config(in_tmp)), "--model.init_args.width", "0"])
    with pytest.raises(ConfigError, match=r"--ckpt_path nope\.ckpt: no such file"):
        cli(["fit", "--config", str(tiny_config(in_tmp)), "--ckpt_path", "nope.ckpt"])


def test_parser_report_condensed_to_the_option():
    message = """Parser key "model":
  Does not validate against any of the Union subtypes
  Subtypes: [<class 'lightning.pytorch.core.module.LightningModule'>, <class 'NoneType'>]
  Errors:
    - Problem with given class_path 'lightning_mae.MAEPretraining':
        Parser key "masking":
          Does not validate against any of the Union subtypes
          Subtypes: [<class 'lightning_mae.masking.SelfGuidedMasking'>, <class 'NoneType'>]
          Errors:
            - Problem with given class_path 'lightning_mae.SelfGuidedMasking':
                Option 'partitoin' is not accepted
            - Expected a <class 'NoneType'>
          Given value type: <class 'jsonargparse._util.NestedArg'>
          Given value: NestedArg(key='partitoin', val='pca')
    - Expected a <class 'NoneType'>
  Given value type: <class 'jsonargparse._util.NestedArg'>
  Given value: NestedArg(key='masking.init_args.partitoin', val='pca')"""
    assert condense_parser_message(message) == (
        "--model.init_args.masking.init_args.partitoin is not an option of lightning_mae.SelfGuidedMasking")
    assert condense_parser_message("Unrecognized arguments: --x 1") == "Unrecognized arguments: --x 1"


# --- 4. a run failing before its first step leaves nothing behind ----------------------------------------------
@pytest.mark.slow
def test_a_run_failing_before_its_first_step_leaves_no_run_directory_or_wandb_run(in_tmp, capfd):
    # The model fails in setup: after the W&B run was started and config.yaml written (both removed again).
    config = str(tiny_config(in_tmp, logger=WANDB, fail_at="setup"))
    code, lines, _ = lightning(capfd, "fit", "--config", config)
    assert code == 2 and lines[0] == "error: tiny model: weights file init.bin not found"
    assert not (in_tmp / "runs").exists(), sorted(map(str, (in_tmp / "runs").rglob("*")))
    # A missing checkpoint is found before any logger exists.
    config_ok = str(tiny_config(in_tmp, logger=WANDB))
    code, lines, _ = lightning(capfd, "fit", "--config", config_ok, "--ckpt_path", "x.ckpt")
    assert code == 2 and lines[0] == "error: --ckpt_path x.ckpt: no such file"
    assert not (in_tmp / "runs").exists()
    # An earlier run's files are kept: only what the failed run created goes.
    run("--config", config_ok)

    def files() -> list[Path]:  # the run directories' files and the W&B runs (not W&B's own log files)
        runs = in_tmp / "runs/tiny"
        return sorted([*runs.glob("tiny/**/*"), *runs.glob("wandb/offline-run-*"), *runs.glob("wandb/*/*.wandb")])

    before = files()
    code, _, _ = lightning(capfd, "fit", "--config", str(tiny_config(in_tmp, logger=WANDB, fail_at="setup")))
    assert code == 2 and files() == before


# --- 5. full disk, truncated checkpoint, malformed YAML, the other method's checkpoint ---------------------------
def raise_unexpected_pos(obj, f, *args, **kwargs):
    f.write(b"PK\x03\x04 partial")
    raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 4160 vs 4048")


def test_a_full_disk_names_the_path_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    atomic_torch_save({"step": 1}, path)
    monkeypatch.setattr(torch, "save", raise_unexpected_pos)
    with pytest.raises(OSError) as err:
        AtomicCheckpointIO().save_checkpoint({"step": 2}, path)
    assert err.value.errno == errno.ENOSPC
    assert f"No space left on device: checkpoint {path} could not be written" in str(err.value)
    assert "unexpected pos 4160" in str(err.value)
    monkeypatch.undo()
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary file left
    assert torch.load(path, weights_only=True) == {"step": 1}
    stream = io.StringIO()
    assert report(err.value, stream=stream) == 1
    assert stream.getvalue().startswith(f"error: No space left on device: checkpoint {path} could not be written")
    assert "Traceback" not in stream.getvalue() and "\nhint: free space" in stream.getvalue()


def test_a_non_finite_loss_is_one_line_with_exit_code_1():
    stream = io.StringIO()
    err = NonFiniteLossError("non-finite loss at global step 3 (epoch 0): loss = nan. Stopped before the step")
    mark_started(err)
    assert report(err, stream=stream) == 1
    assert stream.getvalue().startswith("error: non-finite loss at global step 3") and "Traceback" not in (
        stream.getvalue())
    bug = ValueError("shapes do not match")  # the same type as a user error, raised once steps ran
    mark_started(bug)
    stream = io.StringIO()
    assert report(bug, stream=stream) == 1 and "ValueError: shapes do not match" in stream.getvalue()


def test_a_full_disk_during_a_run(in_tmp, capfd, monkeypatch):
    monkeypatch.setattr(torch, "save", raise_unexpected_pos)
    code, lines, err = lightning(capfd, "fit", "--config", str(tiny_config(in_tmp)))
    assert code == 1 and "Traceback" not in err
    assert lines[0].startswith("error: No space left on device: checkpoint ") and "runs/tiny/checkpoints/" in lines[0]
    assert not list((in_tmp / "runs").rglob("*.tmp"))


def test_a_truncated_checkpoint_is_named(in_tmp, capfd):
    config = str(tiny_config(in_tmp))
    run("--config", config)
    last = in_tmp / "runs/tiny/checkpoints/last.ckpt"
    cut = in_tmp / "cut.ckpt"
    cut.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    with pytest.raises(ConfigError, match=rf"checkpoint {cut} cannot be read: it is truncated or not a checkpoint"):
        read_meta(cut)
    code, lines, err = lightning(capfd, "fit", "--config", config, "--trainer.default_root_dir", "elsewhere",
                                 "--ckpt_path", "cut.ckpt")
    assert code == 2 and lines[0].startswith("error: checkpoint cut.ckpt cannot be read: it is truncated")
    assert not (in_tmp / "elsewhere").exists()


def test_a_checkpoint_of_the_other_method_says_which(in_tmp, capfd):
    inr = in_tmp / "inr.ckpt"
    torch.save({"state_dict": {}, "global_step": 3,
                "hyper_parameters": {"_class_path": "lightning_inr.SignalFit", "lr": 1e-5}}, inr)
    code, lines, _ = lightning(capfd, "fit", "--config", str(DEMO), "--ckpt_path", "inr.ckpt")
    assert code == 2
    assert lines[0] == ("error: checkpoint inr.ckpt holds a lightning_inr.SignalFit, the config builds "
                        "lightning_mae.MAEPretraining")


def test_malformed_yaml_is_one_line_naming_the_file(in_tmp, capfd):
    bad = in_tmp / "bad.yaml"
    bad.write_text("trainer:\n  max_epochs: 3\n   devices: 1\n")
    code, lines, err = lightning(capfd, "fit", "--config", "bad.yaml")
    assert code == 2 and "Traceback" not in err
    assert lines[0] == f"error: config {bad}: not valid YAML at line 3, column 11: mapping values are not allowed here"
    overlay = in_tmp / "overlay.yaml"
    overlay.write_text(yaml.safe_dump({"_base_": "bad.yaml"}))
    code, lines, _ = lightning(capfd, "fit", "--config", "overlay.yaml")
    assert code == 2 and lines[0].startswith(f"error: config {bad}: not valid YAML at line 3")
