"""TensorBoard and matplotlib are extras: without them a run notes it once and goes on; commands that need one say so."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from torchclr.errors import UserError
from torchclr.runlog import RunLog


def test_a_run_goes_on_without_tensorboard_and_matplotlib(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          capsys: pytest.CaptureFixture) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # None in sys.modules: the import fails
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    run = RunLog(tmp_path, writer_enabled=True)
    for step in (1, 2, 3):
        run.log({"step": step, "epoch": 1, "loss": 1.0 / step})
        run.plot()
    run.close()
    assert [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert not (tmp_path / "loss_curve.png").exists() and not (tmp_path / "tensorboard").exists()
    notes = capsys.readouterr().err.strip().splitlines()
    assert len(notes) == 2 and "torchclr[tensorboard]" in notes[0] and "torchclr[plot]" in notes[1]


def test_commands_name_the_missing_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    from torchclr.models import build_encoder
    from torchclr.report.plots import pyplot

    monkeypatch.setitem(sys.modules, "matplotlib", None)
    monkeypatch.setitem(sys.modules, "timm", None)
    with pytest.raises(UserError, match=r"torchclr\[plot\]"):
        pyplot()
    with pytest.raises(UserError, match=r"torchclr\[timm\]"):
        build_encoder("timm:resnet18", 32)
