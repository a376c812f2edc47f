"""Kept contexts: a filled cache saved to disk and loaded back, so a long prompt is processed once.

A YOCO cache after a 1M-token prompt is about 2 GiB (bf16, default shape) and took minutes to
fill; saving it lets a user ask about the same document again tomorrow at the cost of reading
the file. The file is safetensors: one tensor per store field (``"{store}.{field}"``, e.g.
``"4.keys"`` for YOCO's shared K/V after four self-decoder layers), and a JSON header in the
safetensors metadata:

* ``config``: the model's architecture fields, so a cache is never loaded into a model of
  another shape, with an error naming the first field that differs;
* ``weights_sha256``: a hash of the weights, since a cache made by other weights of the same
  shape would load silently and continue into nonsense;
* ``dtype``, per-row ``lengths``, and ``token_ids_sha256`` when the caller gave the ids (then
  :func:`load_cache` can check a prompt against the one the cache was made from).

Files are written to a temporary name and renamed into place, so an interrupted save never
leaves a truncated cache under the real name; a truncated or foreign file is refused on load.
"""

import dataclasses
import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from transformers import PretrainedConfig

from yoco.cache import ModelCache

FORMAT = "yoco-cache"
VERSION = "1"
# Config fields that do not change what a cache holds.
IGNORED_FIELDS = {
    "use_cache",
    "initializer_range",
    "router_aux_loss_coef",
    "bos_token_id",
    "eos_token_id",
    "pad_token_id",
    "cross_decoder_logn_base",  # scales queries only: the cached state and K/V are the same
}


def architecture_fields(config) -> dict:
    """The config's own fields (not PretrainedConfig's bookkeeping) that shape the cache."""
    base = {f.name for f in dataclasses.fields(PretrainedConfig)}
    fields = {f.name: getattr(config, f.name) for f in dataclasses.fields(config) if f.name not in base}
    fields = {k: v for k, v in fields.items() if k not in IGNORED_FIELDS}
    return {"model_type": config.model_type, **json.loads(json.dumps(fields))}


def weights_sha256(model) -> str:
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().contiguous().cpu().view(torch.uint8).numpy())  # no copy on CPU
    return digest.hexdigest()


def token_ids_sha256(token_ids: Sequence[Sequence[int]]) -> str:
    return hashlib.sha256(json.dumps([list(map(int, row)) for row in token_ids]).encode()).hexdigest()


def _rows(token_ids) -> list[list[int]]:
    """Token ids as a list of rows: one prompt (a flat list or 1-D tensor) is one row."""
    ids = token_ids.tolist() if isinstance(token_ids, torch.Tensor) else list(token_ids)
    return ids if ids and isinstance(ids[0], list | tuple) else [ids]


def save_cache(model, cache: ModelCache, path: str | Path, token_ids=None) -> Path:
    """Write ``cache`` (made by ``model``) to ``path`` atomically; ``token_ids``, the prompt
    (or batch of prompts) that filled it, are recorded as a hash. Returns the path."""
    path = Path(path)
    if not isinstance(cache, ModelCache):
        raise ValueError(
            f"can only save a cache from model.new_cache() or yoco.prefill, got {type(cache).__name__}"
        )
    header = {
        "config": architecture_fields(model.config),
        "weights_sha256": weights_sha256(model),
        "dtype": str(cache.dtype).removeprefix("torch."),
        "kv_cache_dtype": cache.kv_cache_dtype,
        "cache": type(cache).__name__,
        "lengths": list(cache.lengths),
        "token_ids_sha256": None if token_ids is None else token_ids_sha256(_rows(token_ids)),
    }
    tensors = {
        f"{index}.{field}": tensor.cpu()
        for index, store in enumerate(cache.stores())
        for field, tensor in store.tensors().items()
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        save_file(
            tensors,
            str(temporary),
            metadata={"format": FORMAT, "version": VERSION, "header": json.dumps(header)},
        )
        with open(temporary, "rb") as f:
            os.fsync(f.fileno())  # durable before the rename publishes it
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def read_header(path: str | Path) -> dict:
    """The JSON header of a saved cache; ValueError if the file is not a whole yoco cache."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"{path}: no such cache file")
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError) as error:
        raise ValueError(f"{path} is not a complete safetensors file ({error})") from error
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a yoco cache file (its safetensors header has no format={FORMAT!r})")
    if metadata.get("version") != VERSION:
        raise ValueError(
            f"{path} is a yoco cache of version {metadata.get('version')!r}; this yoco reads {VERSION!r}"
        )
    return json.loads(metadata["header"])


def check_fits(header: dict, model, path: Path, token_ids=None) -> None:
    """Raise ValueError naming what differs between the saved cache and ``model`` (or the ids)."""
    saved, current = header["config"], architecture_fields(model.config)
    for field in ["model_type", *sorted(set(saved) | set(current))]:  # the kind of model first
        if saved.get(field) != current.get(field):
            raise ValueError(
                f"{path} was made by another model: {field} is {saved.get(field)!r} there and "
                f"{current.get(field)!r} here"
            )
    model_dtype = str(model.dtype).removeprefix("torch.")
    if header["dtype"] != model_dtype:
        raise ValueError(f"{path} holds a {header['dtype']} cache but the model runs {model_dtype}")
    if header["weights_sha256"] != weights_sha256(model):
        raise ValueError(f"{path} was made by a model of the same shape but other weights")
    if token_ids is not None:
        if header["token_ids_sha256"] is None:
            raise ValueError(f"{path} was saved without its token ids, so they cannot be checked")
        if header["token_ids_sha256"] != token_ids_sha256(_rows(token_ids)):
            raise ValueError(f"{path} was made from other token ids than the ones given")


@torch.no_grad()
def load_cache(model, path: str | Path, token_ids=None, room: int | None = None) -> ModelCache:
    """A cache saved by :func:`save_cache`, ready to continue: the next forward call (or
    ``model.generate(..., cache=...)``) carries on after its last token. Refused with a
    ValueError naming the difference if ``model`` is not the model that made it (shape, dtype,
    weights), or, given ``token_ids``, if they are not the ids it was made from. ``room``
    reserves that many tokens after the saved ones (default ``REPLY_ROOM``), so the prompt and
    reply that follow write in place."""
    from yoco.inference.engine import REPLY_ROOM

    path = Path(path)
    header = read_header(path)
    check_fits(header, model, path, token_ids)
    lengths = header["lengths"]
    capacity = max(lengths) + (REPLY_ROOM if room is None else room)
    cache = model.new_cache(len(lengths), capacity, header.get("kv_cache_dtype", "auto"))
    if type(cache).__name__ != header["cache"]:
        raise ValueError(f"{path} holds a {header['cache']} but this model makes a {type(cache).__name__}")
    try:
        with safe_open(str(path), framework="pt", device=str(model.device)) as f:
            names = set(f.keys())
            for index, store in enumerate(cache.stores()):
                fields = {field for field in store.tensors()}
                missing = sorted(f"{index}.{field}" for field in fields if f"{index}.{field}" not in names)
                if missing:
                    raise ValueError(f"{path} lacks the tensor {missing[0]} this model's cache needs")
                store.load_tensors({field: f.get_tensor(f"{index}.{field}") for field in fields}, lengths)
    except (SafetensorError, RuntimeError) as error:
        raise ValueError(f"{path} does not hold this model's cache ({error})") from error
    return cache
