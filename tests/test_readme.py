"""The README's Python example runs as written, and its commands exist."""

import re

import pytest

from conftest import REPO

README = (REPO / "README.md").read_text()


def test_readme_python_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has no Python example"
    namespace: dict = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert 0 < namespace["loss"] < 10  # cross-entropy of 10 classes starts near ln 10 = 2.3
    assert namespace["logits"].shape == (128, 10)


def readme_command(section: str) -> str:
    match = re.search(rf"## {re.escape(section)}\n.*?```bash\n(.*?)\n```", README, re.S)
    assert match, f"README section {section!r} has no bash block"
    command = match.group(1)
    assert "\n" not in command, f"{section}: one command, one line"
    return command


def test_readme_test_command_is_what_ci_runs():
    ci = (REPO / ".ci" / "run").read_text()
    test_command = readme_command("Run the tests")
    assert "pip install -e '.[test]'" in test_command and "pip install -q -e '.[test]'" in ci
    assert "python -m pytest -n 2" in test_command and "python -m pytest -n 2" in ci
    assert "export CI=true" in ci  # missing data fails in CI instead of skipping


def test_readme_test_command_installs_what_the_tests_need():
    """A fresh machine has neither Chromium (the report test) nor Fashion-MNIST (the data)."""
    test_command = readme_command("Run the tests")
    install = re.search(r"apt-get install -y ([^&]*)", test_command).group(1).split()
    for package in ("chromium", "dataset-fashion-mnist", "python3-venv", "python3-dev", "gcc"):
        assert package in install, f"the README's test command does not install {package}"
    ci = (REPO / ".ci" / "run").read_text()
    assert "packages+=(chromium)" in ci and "packages+=(dataset-fashion-mnist)" in ci
    quick_start = readme_command("Quick start: train the lecture CNN")
    assert "dataset-fashion-mnist" in quick_start and "--dataset fashion-mnist" in quick_start


def test_readme_says_how_to_get_the_cpu_only_torch_with_the_pin_of_pyproject():
    pin = re.search(r'"(torch==[0-9.]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    text = " ".join(README.split())
    assert f"`{pin}`" in text
    assert "--extra-index-url https://download.pytorch.org/whl/cpu" in text
    assert "CUDA build" in text and "installed as the pinned CPU build" not in text


@pytest.mark.slow
def test_conftest_imports_no_torch_and_the_quick_subset_is_real():
    import subprocess
    import sys

    probe = ("import sys; sys.path.insert(0, 'tests'); import conftest; "
             "assert 'torch' not in sys.modules, 'conftest imported torch'")
    subprocess.run([sys.executable, "-c", probe], cwd=REPO, check=True)
    collected = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q",
                                "-m", "slow", "-p", "no:xdist", "-p", "no:cacheprovider"],
                               cwd=REPO, capture_output=True, text=True)
    slow = [line for line in collected.stdout.splitlines() if "::" in line]
    assert len(slow) >= 10, collected.stdout[-2000:]
    assert any("test_examples.py" in line for line in slow)
    assert any("headless_chromium" in line for line in slow)
    assert '-m "not slow"' in README
