"""The README's Python example runs and prints exactly the output the README shows."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _example() -> tuple[str, str]:
    text = README.read_text()
    m = re.search(r"```python\n(.*?)```\n\n```\n(.*?)```", text, re.S)
    assert m, "README has no ```python block followed by its output block"
    return m.group(1), m.group(2)


def test_readme_python_example_prints_what_the_readme_says(tmp_path):
    code, expected = _example()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                       timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout == expected


def test_readme_pipeline_example_runs_and_writes_its_files(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), re.S)
    code = [b for b in blocks if "Pipeline.from_pretrained()" in b]
    assert len(code) == 1, "README has one Python example of the task pipeline"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code[0] + "\nprint(video.frames.shape, frames.shape)\n"],
                       capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "(17, 64, 64, 3) (32, 64, 64, 3)"
    for name in ("red.mp4", "red_with_sound.mp4", "long.mp4"):
        assert (tmp_path / name).stat().st_size > 1000, name
