"""``python -m compress.bench`` (what ``make bench`` runs) as a real subprocess.

Module-level tests of the sections cannot notice a dispatcher that parses nothing and
runs nothing; these run the entry point itself.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def _bench(*args, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "compress.bench", *args], capture_output=True, text=True,
                          timeout=timeout, env=env)


def test_help_lists_every_section_and_its_options():
    r = _bench("--help")
    assert r.returncode == 0, r.stderr
    assert "usage: python -m compress.bench" in r.stdout
    for option in ["--threads", "--out", "--repeats", "--format-reps", "--accuracy-size", "--accuracy-reuse"]:
        assert option in r.stdout, option


def test_unknown_section_is_an_error_that_names_it():
    r = _bench("speed")
    assert r.returncode == 2
    assert "unknown section(s) ['speed']" in r.stderr and "overhead" in r.stderr


def test_overhead_section_runs_and_writes_its_report(tmp_path):
    r = _bench("overhead", "--repeats", "1", "--epochs", "2", "--steps", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "threads: torch.set_num_threads(1) -> 1" in r.stdout
    figures = json.loads((tmp_path / "overhead.json").read_text())
    assert figures  # the section's own figures, whatever their values on this machine
    report = (tmp_path / "results.md").read_text()
    assert "overhead" in report
    # a later run of one section keeps the other sections' blocks (with their own command)
    kept = "## format (3 s)\n\n- command: `earlier`\n\n```\n## not a heading\nfigures\n```\n"
    (tmp_path / "results.md").write_text(report + "\n" + kept)
    r = _bench("overhead", "--repeats", "1", "--epochs", "2", "--steps", "2", "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    merged = (tmp_path / "results.md").read_text()
    assert merged.count("## overhead (") == 1 and kept.rstrip() in merged
    assert merged.index("## overhead (") < merged.index("## format (")


def test_split_sections_ignores_headings_inside_code():
    from compress.bench.__main__ import split_sections

    text = "# B\n\n## overhead (1 s)\n\nx\n\n## accuracy (2 s)\n\n```\n## format (9 s)\n```\n"
    blocks = split_sections(text)
    assert list(blocks) == ["overhead", "accuracy"]
    assert "## format (9 s)" in blocks["accuracy"]
