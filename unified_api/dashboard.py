"""The dashboard's files (``ui/``), served at ``/ui/`` by the unified server and by a
component served through ``hatchery serve``.

Plain HTML, CSS and ES modules: nothing to build and nothing from a CDN. The file map is
fixed when the app is built (every ``.html``, ``.js``, ``.css`` and ``.json`` under ``ui/``),
so the middleware serves exact paths only and no request can reach outside the folder.
"""

from __future__ import annotations

from pathlib import Path

UI_DIR = Path(__file__).resolve().parent / "ui"
_SERVED_SUFFIXES = {".html", ".js", ".css", ".json"}
DASHBOARD_REDIRECTS = {"/ui": "/ui/"}


def dashboard_files(root: Path = UI_DIR) -> dict[str, Path]:
    """Public path -> file; ``index.html`` is served as ``/ui/`` only."""
    files: dict[str, Path] = {}
    for path in sorted(root.rglob("*")):
        if path.is_file() and path.suffix in _SERVED_SUFFIXES:
            relative = path.relative_to(root).as_posix()
            files["/ui/" if relative == "index.html" else f"/ui/{relative}"] = path
    return files


def dashboard_options() -> dict[str, dict[str, Path] | dict[str, str]]:
    """The ``create_base_app`` options that serve the dashboard."""
    return {"public_files": dashboard_files(), "public_redirects": DASHBOARD_REDIRECTS}
