"""The README's library example runs as written (it must stay true as features land)."""

import re
from pathlib import Path

import orthoasr

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_library_example_runs(tmp_path, monkeypatch):
    text = README.read_text()
    example = re.search(r"## Using the library\n\n```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)   # it saves sub.pt in the working folder
    orthoasr.set_backend("torch")  # the paper-size model under the Triton interpreter is slow
    try:
        exec(compile(example, str(README), "exec"), {})
    finally:
        orthoasr.set_backend("auto")
    assert (tmp_path / "sub.pt").exists()
