"""Which domains a server runs, decided from its settings; uvicorn's factory in each worker.

The platform's `create_app` serves whatever components it is given; choosing them means
knowing the domains, which is this layer's job, not the platform's.
"""

from __future__ import annotations

from starlette.applications import Starlette

from mlsys.platform.server import Component, create_app
from mlsys.platform.settings import Settings

FACTORY = "mlsys.compose.app:app_from_env"


def domain_components(settings: Settings) -> list[Component]:
    """The recommender with `settings.model_dir`, the tagger with `settings.tagger_model_dir`
    (each imported only when configured: a tagger-only server never imports torch's model)."""
    components = []
    if settings.model_dir:
        from mlsys.recommender.serving.api import component as recommender

        components.append(recommender(settings))
    if settings.tagger_model_dir:
        from mlsys.tagger.serving.api import component as tagger

        components.append(tagger(settings))
    return components


def build_app(settings: Settings) -> Starlette:
    return create_app(settings, domain_components(settings))


def app_from_env() -> Starlette:
    """uvicorn's factory in every worker process: settings come from MLSYS_* variables."""
    return build_app(Settings.from_env())
