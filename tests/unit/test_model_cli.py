"""``imagerec classify`` and ``imagerec models``: offline, exit codes, one error line per file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli.classify import classify
from app.cli.models import models

try:
    from tests.unit import model_samples as s
    from tests.unit.model_samples import model_cache  # noqa: F401
except ImportError:  # tests/unit is not a package: pytest put its directory on sys.path
    import model_samples as s  # type: ignore[no-redef]
    from model_samples import model_cache  # type: ignore[no-redef] # noqa: F401

pytestmark = [pytest.mark.model, pytest.mark.timeout(600)]


@pytest.fixture
def env(model_cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    """Point the CLI's settings at the run's converted-model cache."""
    from app.settings import get_settings

    monkeypatch.setenv("IMAGEREC_MODEL_CACHE", str(model_cache))
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def images(tmp_path: Path) -> dict[str, Path]:
    paths = {"cat": tmp_path / "chelsea.jpg", "coffee": tmp_path / "coffee.png",
             "text": tmp_path / "notes.jpg"}
    paths["cat"].write_bytes(s.jpeg("chelsea"))
    paths["coffee"].write_bytes(s.encode(s.photo("coffee"), "PNG"))
    paths["text"].write_text("shopping list: milk, eggs")
    return paths


def test_classify_prints_top5(env: None, images: dict[str, Path]) -> None:
    result = CliRunner().invoke(classify, [str(images["cat"]), str(images["coffee"])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(str(images["cat"]))
    assert len(lines) == 12  # two headers, five labels each
    assert any(name in lines[1] for name in ("tiger cat", "Egyptian cat", "tabby"))
    assert "espresso" in lines[7] and "[967]" in lines[7]


def test_classify_json_and_failures(env: None, images: dict[str, Path], tmp_path: Path) -> None:
    missing = tmp_path / "missing.jpg"
    result = CliRunner().invoke(classify, [str(images["text"]), str(images["coffee"]),
                                           str(missing), "--json", "-k", "3"])
    assert result.exit_code == 1
    docs = json.loads(result.stdout)
    assert [d["file"] for d in docs] == [str(images["text"]), str(images["coffee"]),
                                         str(missing)]
    assert "unsupported_format" in docs[0]["error"] and "cannot read" in docs[2]["error"]
    assert [lab["class_id"] for lab in docs[1]["labels"]][0] == 967
    assert len(docs[1]["labels"]) == 3 and docs[1]["model"] == "efficientnet_lite0"
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 2 and str(images["text"]) in errors[0]


def test_classify_unknown_model(env: None, images: dict[str, Path], tmp_path: Path) -> None:
    result = CliRunner().invoke(classify, [str(images["cat"]), "--model", "nope"],
                                env={"IMAGEREC_MODELS_LOCAL": str(tmp_path / "store")})
    assert result.exit_code == 2 and "nope" in result.stderr


def test_models_import_list_set_default(env: None, tmp_path: Path) -> None:
    import keras

    inputs = keras.Input((32, 32, 3))
    x = keras.layers.GlobalAveragePooling2D()(keras.layers.Conv2D(4, 3)(inputs))
    keras.Model(inputs, keras.layers.Dense(2)(x)).save(tmp_path / "m.keras")
    (tmp_path / "two.txt").write_text("yes\nno\n")
    (tmp_path / "three.txt").write_text("yes\nno\nmaybe\n")
    store = ["--local", str(tmp_path / "store")]
    runner = CliRunner()

    bad = runner.invoke(models, [*store, "import", str(tmp_path / "m.keras"), "--labels",
                                 str(tmp_path / "three.txt"), "--name", "yesno"])
    assert bad.exit_code == 1
    assert "output size 2" in bad.stderr and "3 labels" in bad.stderr

    ok = runner.invoke(models, [*store, "import", str(tmp_path / "m.keras"), "--labels",
                                str(tmp_path / "two.txt"), "--name", "yesno"])
    assert ok.exit_code == 0, ok.output
    assert "yesno:v1" in ok.stdout

    switched = runner.invoke(models, [*store, "set-default", "yesno:v1"])
    assert switched.exit_code == 0, switched.output
    listed = runner.invoke(models, [*store, "list", "--json"])
    entries = json.loads(listed.stdout)
    assert [(e["name"], e["version"]) for e in entries if e["default"]] == [("yesno", "v1")]
    table = runner.invoke(models, [*store, "list"]).stdout
    assert any(line.startswith("*") and "yesno" in line for line in table.splitlines())

    missing = runner.invoke(models, [*store, "set-default", "yesno:v7"])
    assert missing.exit_code == 1 and "v7" in missing.stderr
