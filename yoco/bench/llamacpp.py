"""llama.cpp beside yoco: our Transformer written as a Llama GGUF and timed through llama-cpp-python.

llama.cpp is what a CPU user would otherwise run, so the long-context benchmark times it in the
same run as our models. The model is not an approximation of ours: :func:`write_gguf` writes
our Transformer's own weights (it is a Llama, tested equal to ``transformers``' one) with the
``gguf`` package, and :func:`check_same_model` compares llama.cpp's next-token logits with ours
before anything is timed.

The one conversion that matters: Hugging Face Llama (and our Transformer) rotate each head's
first half of dimensions against its second half, while llama.cpp's ``llama`` architecture
rotates adjacent pairs (0, 1), (2, 3) ... So the rows of ``q_proj`` and ``k_proj`` are reordered
per head, first half and second half interleaved (:func:`interleave_rotary_rows`); the
attention scores are unchanged because q and k are reordered alike.

Both packages are optional (``make bench-deps``, which compiles llama.cpp from the registry's
source package in a few minutes); without them the benchmark says so and times yoco alone.
"""

import time
from pathlib import Path

import numpy as np
import torch

from yoco.bench.profile import decode_step_times

# A vocabulary llama.cpp accepts for any ids: SentencePiece-style entries with no merges.
_SPECIAL = ["<unk>", "<s>", "</s>"]


def available() -> str | None:
    """None when llama-cpp-python and gguf import, else the reason they don't."""
    try:
        import gguf  # noqa: F401
        import llama_cpp  # noqa: F401
    except ImportError as error:
        return f"{error.name} is not installed (make bench-deps)"
    return None


def interleave_rotary_rows(weight: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of a q/k projection (heads·d, in) from the rotate-half layout (per head: dims
    0..d/2-1 pair with d/2..d-1) to adjacent pairs (row 2i is old row i, row 2i+1 is i + d/2)."""
    rows, columns = weight.shape
    return weight.reshape(heads, 2, rows // heads // 2, columns).transpose(1, 2).reshape(rows, columns)


def write_gguf(model, path: str | Path, dtype: str) -> Path:
    """Our Transformer (``yoco_transformer``, RoPE, SwiGLU, RMSNorm) as a ``llama`` GGUF with
    matrices in ``dtype`` ("f32" or "f16"; norms stay float32, as llama.cpp wants them)."""
    import gguf

    config = model.config
    if config.model_type != "yoco_transformer" or config.ffn_type != "swiglu":
        raise ValueError(f"only a SwiGLU Transformer converts to a Llama GGUF, got {config.model_type}")
    matrix_dtype = {"f32": np.float32, "f16": np.float16}[dtype]
    path = Path(path)
    writer = gguf.GGUFWriter(str(path), "llama")
    heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(config.hidden_size // heads)
    writer.add_rope_freq_base(config.rope_theta)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if dtype == "f32" else gguf.LlamaFileType.MOSTLY_F16)
    tokens = _SPECIAL + [f"t{i}" for i in range(len(_SPECIAL), config.vocab_size)]
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores([0.0] * len(tokens))
    writer.add_token_types(
        [gguf.TokenType.UNKNOWN, gguf.TokenType.CONTROL, gguf.TokenType.CONTROL]
        + [gguf.TokenType.NORMAL] * (len(tokens) - len(_SPECIAL))
    )
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)

    state = {name: tensor.detach().float() for name, tensor in model.state_dict().items()}

    def add(name: str, tensor: torch.Tensor, keep_float32: bool = False) -> None:
        writer.add_tensor(name, tensor.numpy().astype(np.float32 if keep_float32 else matrix_dtype))

    add("token_embd.weight", state["model.embed_tokens.weight"])
    add("output_norm.weight", state["model.norm.weight"], keep_float32=True)
    add("output.weight", state["lm_head.weight"])
    for i in range(config.num_hidden_layers):
        layer = f"model.layers.{i}."
        block = f"blk.{i}."
        add(block + "attn_norm.weight", state[layer + "input_layernorm.weight"], keep_float32=True)
        add(block + "attn_q.weight", interleave_rotary_rows(state[layer + "self_attn.q_proj.weight"], heads))
        add(
            block + "attn_k.weight",
            interleave_rotary_rows(state[layer + "self_attn.k_proj.weight"], kv_heads),
        )
        add(block + "attn_v.weight", state[layer + "self_attn.v_proj.weight"])
        add(block + "attn_output.weight", state[layer + "self_attn.o_proj.weight"])
        add(block + "ffn_norm.weight", state[layer + "post_attention_layernorm.weight"], keep_float32=True)
        add(block + "ffn_gate.weight", state[layer + "mlp.gate_proj.weight"])
        add(block + "ffn_up.weight", state[layer + "mlp.up_proj.weight"])
        add(block + "ffn_down.weight", state[layer + "mlp.down_proj.weight"])
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


BATCH = 512  # tokens llama.cpp evaluates at a time (its n_batch and n_ubatch)


def load(path: str | Path, context: int, threads: int, batch: int = BATCH):
    """A llama.cpp model with room for ``context`` tokens, flash attention on, logits of every
    evaluated position off (a prompt's last one is all a generation needs)."""
    import llama_cpp

    return llama_cpp.Llama(
        model_path=str(path),
        n_ctx=context,
        n_batch=batch,
        n_ubatch=batch,
        n_threads=threads,
        n_threads_batch=threads,
        flash_attn=True,
        logits_all=False,
        verbose=False,
    )


def last_logits(llm) -> np.ndarray:
    """The next-token logits after everything evaluated so far."""
    import llama_cpp

    pointer = llama_cpp.llama_get_logits_ith(llm.ctx, -1)
    return np.ctypeslib.as_array(pointer, shape=(llm.n_vocab(),)).copy()


def check_same_model(model, path: str | Path, threads: int, length: int = 64) -> float:
    """Largest |logit difference| between llama.cpp and our model after a random prompt; the
    caller decides what is close enough for the GGUF's dtype."""
    ids = torch.randint(
        len(_SPECIAL), model.config.vocab_size, (1, length), generator=torch.Generator().manual_seed(0)
    )
    llm = load(path, context=length + 8, threads=threads)
    llm.eval(ids[0].tolist())
    theirs = last_logits(llm)
    llm.close()
    with torch.no_grad():
        ours = model.float()(ids, logits_to_keep=1).logits[0, -1].numpy()
    return float(np.abs(theirs - ours).max())


def measure(path: str | Path, lengths: list[int], steps: int, threads: int, vocab_size: int, budget_s: float):
    """One growing prompt through llama.cpp: prefill to each length in turn (a prefill to N is
    the same work whether or not it stopped at shorter lengths on the way, so each length's
    prefill time is the sum up to it), and at each length ``steps`` greedy decode steps after one
    warm-up step, timed one by one (their median, as for YOCO); the decoded tokens stay in the
    context, as a generation's would. One untimed batch of the prompt goes first (YOCO's models
    get one untimed chunk). Stops before
    a length whose prefill, growing at most with the square of the prompt, would pass
    ``budget_s`` seconds."""
    ids = torch.randint(
        len(_SPECIAL), vocab_size, (max(lengths),), generator=torch.Generator().manual_seed(1)
    )
    llm = load(path, context=max(lengths) + (steps + 1) * len(lengths) + 16, threads=threads)
    llm.eval(ids[:BATCH].tolist())  # one untimed batch first, as llama-bench does
    llm.reset()  # the timed prompt starts again at position 0
    rows, fed, prefill_s = [], 0, 0.0
    for n in sorted(lengths):
        if rows and prefill_s * (n / fed) ** 2 > budget_s:
            break
        start = time.perf_counter()
        llm.eval(ids[fed:n].tolist())
        prefill_s += time.perf_counter() - start
        fed = n
        token = int(last_logits(llm).argmax())
        llm.eval([token])  # warm-up step
        times = decode_step_times(lambda: llm.eval([int(last_logits(llm).argmax())]), steps)
        rows.append(dict(length=n, prefill_s=prefill_s, **times))
    llm.close()
    return rows
