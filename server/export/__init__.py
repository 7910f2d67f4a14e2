"""Export a trained :class:`~server.generative.GenerativeModel` into a device bundle.

Stages, each ending in one artifact (``server/export/``):

* :mod:`.modules`  - example inputs for the model's two export graphs (``GenerativeRetriever.export_graphs``)
* :mod:`.torch_pt2`, :mod:`.onnx`, :mod:`.executorch`, :mod:`.litert` - one exporter per backend
* :mod:`.bundle`   - ``export_bundle(gm, out_dir, variants)`` writes the bundle folder (+ archive)
"""

__all__ = ["export_bundle", "DEFAULT_VARIANTS"]


def __getattr__(name):  # lazy: exporting pulls in heavy optional packages
    if name in __all__:
        from . import bundle

        return getattr(bundle, name)
    raise AttributeError(name)
