from pathlib import Path

import pytest

from pipelines.modes import MODES
from ui.examples import mode_examples


@pytest.mark.parametrize("family", ["embedded", "sd15"])
@pytest.mark.parametrize("mode", ["text", "pose", "edge", "depth"])
def test_every_example_row_fits_its_tab_and_its_files_exist(family, mode):
    rows = mode_examples(family, mode)
    assert rows, f"no {mode} examples for {family}"
    for row in rows:
        assert len(row) == len(MODES[mode].example_columns)
        values = dict(zip(MODES[mode].example_columns, row, strict=True))
        assert isinstance(values["seed"], int) and values["randomize_seed"] is False  # the page shows that seed
        if mode != "text":
            assert Path(values["image"]).is_file()
            assert values["preprocessor"] in MODES[mode].preprocessors


def test_examples_that_need_missing_detector_weights_are_hidden():
    shown = mode_examples("embedded", "pose", hidden=("openpose",))
    assert shown and all(row[2] != "openpose" for row in shown)
    assert any(row[2] == "openpose" for row in mode_examples("embedded", "pose"))
