

def test_mods_compose_cache_clears_on_a_variant_switch():
    """cache -> switcher -> retriever: a switch empties the cache, so answers come from the new variant."""
    from edge_gr.policy import DeviceState, VariantPolicy, VariantSwitcher

    class R:
        variants, variant = ["fp16", "int8", "int4"], "fp16"

        def switch(self, v):
            R.variant = v

        def search(self, q, k=10):
            return [(R.variant, 0.0)]

    sw = VariantSwitcher(R(), VariantPolicy(R.variants))
    cr = CachedRetriever(sw)
    sw.on_switch.append(cr.clear)
    assert cr.search("q") == [("fp16", 0.0)] and cr.search("q") == [("fp16", 0.0)]
    sw.update(DeviceState(0.1))
    assert cr.search("q") == [("int4", 0.0)] and cr.stats()["prediction"]["hits"] == 1
    assert cr.variants == R.variants  # other attributes pass through to the wrapped retriever
