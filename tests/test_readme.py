"""The README's Python example runs as written, and its commands exist."""

import re

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert 0 < namespace["loss"] < 10  # cross-entropy of 10 classes starts near ln 10 = 2.3
    assert namespace["logits"].shape == (128, 10)


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    test_command = re.search(r"## Run the tests\n\n```bash\n(.*?)\n```", README, re.S).group(1)
    assert "pip install -e '.[test]'" in test_command and "pip install -q -e '.[test]'" in ci
    assert "python -m pytest -n 2" in test_command and "python -m pytest -n 2" in ci
