"""The search service: ``create_app(index)`` (a FastAPI app over a ``SearchIndex``) and ``serve(index_dir)``
(load an index folder and run it with uvicorn), behind ``lookalike serve <index dir>``.

Needs the ``serve`` extra (``pip install "lookalike[serve]"``: FastAPI, uvicorn, python-multipart).
"""

from lookalike.serve.command import SERVE_DEFAULTS, add_serve_subcommand, serve

__all__ = ["create_app", "serve", "add_serve_subcommand", "SERVE_DEFAULTS"]


def create_app(*args, **kwargs):
    """See ``lookalike.serve.app.create_app`` (imported on first use: FastAPI loads only when serving)."""
    from lookalike.serve.app import create_app as _create_app

    return _create_app(*args, **kwargs)
