"""tools/house_figures.py on a package written here, whose sizes are known by construction."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _tool():
    spec = importlib.util.spec_from_file_location("house_figures", ROOT / "tools" / "house_figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_files_per_folder_and_the_largest_file_and_function(tmp_path):
    tool = _tool()
    package = tmp_path / "src" / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "def one():\n    return 1\n\n\nclass K:\n    def two(self):\n        x = 1\n\n        return x\n"
    )
    (package / "sub" / "b.py").write_text("@decorated\ndef three():\n" + "    pass\n" * 5)
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "a.py").write_text("ignored = 1\n")
    assert tool.files_per_folder(package) == {"src/pkg": 2, "src/pkg/sub": 1}
    assert tool.largest_files(package, 2) == [(9, "src/pkg/a.py"), (7, "src/pkg/sub/b.py")]
    # from the def line to the last line: one 2, K.two 4 (its blank line counted), three 6 (the decorator not)
    assert sorted(tool.functions(package)) == [
        (2, "src/pkg/a.py::one"),
        (4, "src/pkg/a.py::K.two"),
        (6, "src/pkg/sub/b.py::three"),
    ]
