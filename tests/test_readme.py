"""The README's Python examples run as written (and print what the README says they print)."""

import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).parent.parent / "README.md"


def test_readme_python_examples_run(tmp_path, monkeypatch):
    text = README.read_text()
    blocks = re.findall(r"```python\n(.*?)```", text, re.S)
    assert len(blocks) >= 2
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            exec(compile(block, str(README), "exec"), {})
        # Lines like `print(x)  # expected` must print the expected text.
        for expected in re.findall(r"print\(.*\)\s+# (.+)", block):
            assert expected.strip() in out.getvalue(), (expected, out.getvalue())
