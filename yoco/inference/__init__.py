from yoco.inference.engine import generate, prefill, stream_generate

__all__ = ["generate", "prefill", "stream_generate"]
