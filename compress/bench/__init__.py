"""``make bench`` (``python -m compress.bench``): figures measured side by side in one run.

Each section is a module ``compress/bench/<name>.py`` with ``run(args) -> dict`` (it prints
its own figures) and, optionally, ``add_arguments(parser)``. Sections are registered in
``SECTIONS`` in ``compress/bench/__main__.py``.
"""
