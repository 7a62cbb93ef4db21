"""requirements.txt is what serving imports: every package app.py, ui/ and pipelines/ import is pinned there, and
nothing there is left that serving does not need. Training and test packages live in their own files, and serving
imports nothing from embedded/ (training, evaluation and the helpers tests and benchmarks share)."""

import ast
import re
import sys
from importlib.metadata import packages_distributions
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FIRST_PARTY = {"app", "pipelines", "ui", "embedded", "serving"}
# What the page imports of serving/ when it runs on a Ray Serve backend; the Serve application itself (app.py,
# local.py) imports Ray, from requirements-ray.txt.
PAGE_SIDE_OF_SERVING = ("client.py", "wire.py")
# Pinned for serving though no import statement names them: controlnet-aux is imported by module path
# (pipelines/preprocessors/weights.py), its detectors import torchvision, and diffusers loads weights through
# accelerate when it is there.
NEEDED_WITHOUT_AN_IMPORT = {"controlnet-aux", "torchvision", "accelerate"}


def serving_files() -> list[Path]:
    return [ROOT / "app.py", *sorted((ROOT / "pipelines").rglob("*.py")), *sorted((ROOT / "ui").rglob("*.py")),
            *(ROOT / "serving" / name for name in PAGE_SIDE_OF_SERVING)]


def imported_top_level_names(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, by its top-level name."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def normalised(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pinned(requirements: Path) -> set[str]:
    lines = (line.split("#")[0].strip() for line in requirements.read_text().splitlines())
    return {normalised(re.split(r"[<>=!~\[;]", line)[0]) for line in lines if line and not line.startswith("-")}


def serving_distributions() -> dict[str, str]:
    """Distribution -> one serving file that imports it."""
    distributions = packages_distributions()
    found = {}
    for path in serving_files():
        for name in imported_top_level_names(path) - FIRST_PARTY - set(sys.stdlib_module_names):
            for distribution in distributions.get(name, [name]):
                found.setdefault(normalised(distribution), str(path.relative_to(ROOT)))
    return found


def test_serving_imports_nothing_from_training_or_its_packages():
    for path in serving_files():
        assert not imported_top_level_names(path) & {"embedded", "open_clip", "skimage"}, path


def test_every_package_serving_imports_is_pinned_in_requirements_txt():
    missing = {d: where for d, where in serving_distributions().items() if d not in pinned(ROOT / "requirements.txt")}
    assert not missing, f"imported by serving, not in requirements.txt: {missing}"


def test_requirements_txt_pins_nothing_serving_does_not_need():
    unused = pinned(ROOT / "requirements.txt") - set(serving_distributions()) - NEEDED_WITHOUT_AN_IMPORT
    assert not unused, f"in requirements.txt, imported by no serving module: {sorted(unused)}"


def test_training_and_test_packages_are_pinned_in_their_own_files():
    training = pinned(ROOT / "requirements-train.txt")
    assert {"open-clip-torch", "tqdm"} <= training
    assert {"pytest", "ruff", "scikit-image"} <= pinned(ROOT / "requirements-dev.txt")
    assert not training & pinned(ROOT / "requirements.txt")
