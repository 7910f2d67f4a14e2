"""The README's quickstarts, run as written (on a tiny docs-only folder and the tiny preset), so they cannot rot."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

from server.cli import main as cli

README = (Path(__file__).parents[1] / "README.md").read_text()


def _block(title: str, lang: str) -> str:
    part = README[README.index(title):]
    m = re.search(rf"```{lang}\n(.*?)```", part, re.S)
    assert m, f"no {lang} block under {title!r}"
    return m.group(1)


def test_readme_is_short_and_opens_with_the_two_commands():
    assert len(README.encode()) <= 10_000
    first = re.search(r"```bash\n(.*?)```", README, re.S).group(1).strip().splitlines()
    assert [ln.split()[:2] for ln in first] == [["make", "demo"], ["make", "test"]]


def test_cloud_and_device_quickstarts_run(tmp_path, monkeypatch):
    folder = tmp_path / "FOLDER"
    folder.mkdir()
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho sigma".split()
    with open(folder / "docs.jsonl", "w") as f:
        for j in range(12):
            f.write(json.dumps({"id": f"d{j}", "text": " ".join(words[(j + t) % len(words)] for t in range(8))}) + "\n")
    monkeypatch.chdir(tmp_path)
    for line in _block("## Cloud quickstart", "bash").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        argv = shlex.split(line)
        assert argv[0] == "edge-gr"
        if argv[1] in ("eval", "train", "build"):
            argv += ["--preset", "tiny", "--device", "cpu"]  # the tiny preset: seconds, not minutes
        assert cli(argv[1:]) == 0, line
    assert (tmp_path / "bundle" / "manifest.json").is_file()
    code = _block("## Device quickstart", "python")
    ns: dict = {}
    exec(compile(code, "README.md (device quickstart)", "exec"), ns)  # noqa: S102 - our own README
    assert ns["s"].current in ns["r"].variants
