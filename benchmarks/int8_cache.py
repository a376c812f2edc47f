"""How far an int8 cache moves a trained model's predictions from its bfloat16 cache.

    python benchmarks/int8_cache.py --model runs/needle [--prompts 8] [--length 768] [--new-tokens 64]

The model runs in bfloat16 on standard-library prose (docstrings and comments). For each
prompt: the next-token logits of every one of the last ``--scored`` positions, teacher-forced
one token at a time through a cache filled by a prefill of the rest, with the cache in bfloat16
and in int8 (largest |difference| of the logits, KL divergence of the next-token distributions,
agreement of their argmax); then ``--new-tokens`` greedy tokens from each cache and how many of
them agree before the first difference. Results: docs/BENCHMARKS.md.
"""

import argparse

import torch

import yoco
from yoco.bench.environment import describe, environment
from yoco.data.stdlib import stdlib_prose
from yoco.models.pretrained import load_pretrained


@torch.no_grad()
def teacher_forced(model, ids: list[int], scored: int, kv_cache_dtype: str) -> torch.Tensor:
    """Logits (scored, vocab) for the last ``scored`` positions, one cached step each."""
    _, cache = yoco.prefill(model, ids[:-scored], kv_cache_dtype=kv_cache_dtype)
    return torch.cat(
        [model(torch.tensor([[t]]), cache=cache, logits_to_keep=1).logits[0].float() for t in ids[-scored:]]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--length", type=int, default=768)
    parser.add_argument("--scored", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    model, tokenizer = load_pretrained(args.model)
    model = model.to(torch.bfloat16).eval()
    text = stdlib_prose(400_000)[200_000:]
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    worst, kls, argmax_agree, greedy_agree = 0.0, [], [], []
    for p in range(args.prompts):
        prompt = ids[p * args.length : (p + 1) * args.length]
        exact = teacher_forced(model, prompt, args.scored, "auto")
        int8 = teacher_forced(model, prompt, args.scored, "int8")
        worst = max(worst, (exact - int8).abs().max().item())
        kls.append(
            torch.nn.functional.kl_div(
                int8.log_softmax(-1), exact.log_softmax(-1), log_target=True, reduction="batchmean"
            ).item()
        )
        argmax_agree.append((exact.argmax(-1) == int8.argmax(-1)).float().mean().item())
        a, b = (
            yoco.generate(model, [prompt], args.new_tokens, kv_cache_dtype=k)[0] for k in ("auto", "int8")
        )
        greedy_agree.append(next((i for i, (x, y) in enumerate(zip(a, b, strict=True)) if x != y), len(a)))
    print(describe(environment()))
    print(f"model {args.model} in bfloat16; {args.prompts} prompts of {args.length} tokens of stdlib prose")
    print(
        f"teacher-forced, last {args.scored} positions: largest |logit difference| {worst:.4f}, "
        f"mean KL(bf16 || int8) {sum(kls) / len(kls):.2e} nats, argmax agreement {sum(argmax_agree) / len(argmax_agree):.1%}"
    )
    print(
        f"greedy, {args.new_tokens} tokens: identical prefix per prompt {greedy_agree} "
        f"({sum(g == args.new_tokens for g in greedy_agree)} of {args.prompts} identical throughout)"
    )


if __name__ == "__main__":
    main()
