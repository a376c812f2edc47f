"""Where a YOCO's cross-decoder looks when a needle answer goes wrong.

For the prompts of ``yoco eval needle`` at one length (the same ones when it is the longest
that evaluation asked, which sets the filler), each answer is scored
teacher-forced; at the first wrong digit of each wrong answer, and at every right digit, this
sums each cross-decoder layer's attention (mean over heads) on three kinds of keys: the asked
needle's sentence, digits elsewhere in the haystack, and everything else. A model that copies
by the digits just written and not by which needle it is in puts its weight on haystack digits
where it fails.

    python scripts/needle_misses.py --model runs/needle-gret --length 8192
"""

import argparse

import torch

import yoco.layers.cross_attention as cross_attention
from yoco.data.stdlib import stdlib_prose
from yoco.data.synthetic import needle_sentence
from yoco.eval.needle import DEPTHS, answer_token_hits, needle_prompt
from yoco.models.pretrained import load_pretrained


def attention_recorder(weights: list[torch.Tensor]):
    """A stand-in for the cross-decoder's attention that also keeps its weights (H, Nq, Nk)."""
    attend = cross_attention.causal_attention

    def recording(q, k, v, key_mask=None, scale=None):
        n_q, n_k = q.shape[-2], k.shape[-2]
        scores = (q @ k.transpose(-1, -2)) * (scale or q.shape[-1] ** -0.5)
        causal = torch.ones(n_q, n_k, dtype=torch.bool).tril(n_k - n_q)
        weights.append(scores.masked_fill(~causal, float("-inf")).softmax(-1)[0])
        return attend(q, k, v, key_mask, scale)

    return recording


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--length", type=int, default=8192)
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()

    model, tokenizer = load_pretrained(args.model)
    tokenize = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    filler = tokenize(stdlib_prose(args.length * 8))
    digit_ids = {i for i in range(tokenizer.vocab_size) if tokenizer.decode([i]).strip().isdigit()}
    weights: list[torch.Tensor] = []
    cross_attention.causal_attention = attention_recorder(weights)
    totals = {"wrong": None, "right": None}
    counts = {"wrong": 0, "right": 0}
    wrong_answers = 0
    for depth in DEPTHS:
        for trial in range(args.trials):
            prompt = needle_prompt(tokenize, filler, args.length, depth, trial)
            answer = tokenize(f" {prompt.answer}")
            ids = prompt.ids + answer
            weights.clear()
            hits = answer_token_hits(model, prompt.ids, answer)  # the recorder keeps its attention
            needle_end = prompt.needle_start + len(tokenize(needle_sentence(prompt.city, prompt.answer)))
            kinds = torch.zeros(len(ids), dtype=torch.long)  # 0: other, 1: needle, 2: haystack digit
            kinds[[i for i, t in enumerate(ids[: len(prompt.ids)]) if t in digit_ids]] = 2
            kinds[prompt.needle_start : needle_end] = 1
            kinds[len(prompt.ids) :] = 0  # the answer's own digits
            wrong_answers += not all(hits)
            first_wrong = hits.index(False) if not all(hits) else None
            for position, hit in enumerate(hits):
                if not (hit or position == first_wrong):
                    continue
                kind = "right" if hit else "wrong"
                # (layers, 3): attention of this answer position, mean over heads, per kind of key.
                row = torch.stack([w[:, position - len(hits) - 1].mean(0) for w in weights])
                mass = torch.zeros(len(weights), 3).index_add_(1, kinds, row)
                totals[kind] = mass if totals[kind] is None else totals[kind] + mass
                counts[kind] += 1
    print(f"{args.model} at {args.length}: {wrong_answers} of {len(DEPTHS) * args.trials} answers wrong")
    for kind in ("wrong", "right"):
        if counts[kind]:
            mean = totals[kind] / counts[kind]
            for layer, (other, needle, digits) in enumerate(mean.tolist()):
                print(
                    f"  {kind} answer tokens ({counts[kind]}), cross layer {layer}: asked needle {needle:.2f}, "
                    f"haystack digits {digits:.2f}, elsewhere {other:.2f}"
                )


if __name__ == "__main__":
    main()
