"""How ``model.generate()`` from transformers carries our cache instead of a per-layer one.

Our models keep their own cache objects (:mod:`yoco.cache`): YOCO's is one global K/V plus
constant-size self-decoder state, which transformers' ``DynamicCache`` cannot hold. The public
paths do most of the work:

* the cache travels between steps under the keyword ``cache`` (transformers' name since 5.24;
  ``past_key_values`` before), which :meth:`CausalLM.forward` takes and returns;
* a user may pass one in: ``model.generate(ids, cache=model.new_cache(rows))``;
* beam search reorders it through ``Cache.reorder_cache``, prompt-lookup decoding rolls it back
  through ``Cache.crop``, both implemented by :class:`yoco.cache.ModelCache`.

What no public path offers is *making* our cache when the caller did not pass one: transformers
would build a ``DynamicCache`` before the first forward. That decision lives in one private
method, ``GenerationMixin._prepare_cache_for_generation``, which :class:`MakesOwnCache`
overrides. :func:`check_generation_hook` verifies that the method still has the signature the
override was written against; the test suite calls it, so a transformers release that changes
it fails with a message naming the version instead of silently decoding from an empty cache.
"""

import inspect

import transformers
from transformers import GenerationMixin

TESTED_TRANSFORMERS = "5.24"
# The parameters of GenerationMixin._prepare_cache_for_generation in the tested release.
HOOK_PARAMETERS = (
    "self",
    "generation_config",
    "model_kwargs",
    "generation_mode",
    "batch_size",
    "max_cache_length",
)
CACHE_KEYWORD = "cache"  # the model_kwargs key generate() reads the cache from and passes to forward


def check_generation_hook() -> None:
    """Raise RuntimeError if transformers' private cache hook is not what our override expects."""
    from transformers.generation.utils import ALL_CACHE_NAMES

    found = tuple(inspect.signature(GenerationMixin._prepare_cache_for_generation).parameters)
    problems = []
    if found != HOOK_PARAMETERS:
        problems.append(
            f"GenerationMixin._prepare_cache_for_generation takes {found}, expected {HOOK_PARAMETERS}"
        )
    if ALL_CACHE_NAMES[0] != CACHE_KEYWORD:
        problems.append(
            f"generate() keeps its cache under {ALL_CACHE_NAMES[0]!r}, expected {CACHE_KEYWORD!r}"
        )
    if problems:
        raise RuntimeError(
            f"transformers {transformers.__version__} changed the generation internals yoco hooks into "
            f"(tested with {TESTED_TRANSFORMERS}): " + "; ".join(problems)
        )


class MakesOwnCache:
    """Mixin for our causal LMs: ``generate()`` gets the model's own cache, sized for every row
    it will decode (prompts x beams or returned sequences), unless the caller passed one."""

    def _prepare_cache_for_generation(
        self, generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
    ):
        if model_kwargs.get(CACHE_KEYWORD) is not None or generation_config.use_cache is False:
            # A caller's cache (or none at all): transformers' own checks apply unchanged.
            return super()._prepare_cache_for_generation(
                generation_config, model_kwargs, generation_mode, batch_size, max_cache_length
            )
        # generate() expands the inputs for beams / returned sequences before the first forward.
        rows = batch_size * max(generation_config.num_beams or 1, generation_config.num_return_sequences or 1)
        model_kwargs[CACHE_KEYWORD] = self.new_cache(rows, max_cache_length)
