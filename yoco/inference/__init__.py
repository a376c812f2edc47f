from yoco.inference.engine import generate, prefill, stream_generate
from yoco.inference.saved_cache import load_cache, save_cache

__all__ = ["generate", "load_cache", "prefill", "save_cache", "stream_generate"]
