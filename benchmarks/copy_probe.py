"""How many steps a small model needs to learn to copy from its context (an induction head).

Needle retrieval is a copy: the question repeats the needle's prefix, and the answer is what
followed it. This probe isolates that skill on dense synthetic data: 128 random bytes (lowercase
letters, or every printable ASCII byte with ``--alphabet printable``) in which a 32-byte span
reappears later, and reports teacher-forced accuracy on the repeat (after its first two bytes).
``--fixed`` puts the repeat exactly 64 bytes after the original, which a model can solve with a
positional head; by default the gap varies (32-64 bytes), which needs content-based lookup, the
kind needle retrieval needs.

    python benchmarks/copy_probe.py --kind yoco-swa --steps 1200
    python benchmarks/copy_probe.py --kind yoco-swa+diff --alphabet printable --steps 2400 \
        --save runs/copy-probe-diff   # stage 1 of the needle curriculum (yoco train needle)
"""

import argparse
import string
import time

import torch

from yoco.models import build
from yoco.tokenizer import BYTE_VOCAB_SIZE, load_tokenizer
from yoco.train.data import PRINTABLE

SEQ, SPAN, BATCH = 128, 32, 32
# The bytes the random text is drawn from; "printable" is the alphabet of the trainer's copy:
# documents, digits and punctuation included, so the copy is byte-generic.
ALPHABETS = {
    name: torch.tensor(list(chars.encode()))
    for name, chars in {"letters": string.ascii_lowercase, "printable": PRINTABLE}.items()
}


def copy_batch(
    generator: torch.Generator, varying: bool, alphabet: torch.Tensor = ALPHABETS["letters"]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, mask): mask marks the repeated bytes the model can only get by copying."""
    ids = alphabet[torch.randint(0, len(alphabet), (BATCH, SEQ), generator=generator)]
    mask = torch.zeros(BATCH, SEQ, dtype=torch.bool)
    for row in range(BATCH):
        start = int(torch.randint(0, SPAN, (1,), generator=generator)) if varying else 0
        gap = int(torch.randint(0, SPAN + 1, (1,), generator=generator)) if varying else SPAN
        repeat = start + SPAN + gap
        ids[row, repeat : repeat + SPAN] = ids[row, start : start + SPAN]
        mask[row, repeat + 2 : repeat + SPAN] = True
    return ids, mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--kind",
        default="yoco-swa",
        help="transformer, yoco-swa, yoco-gret, ...; +diff for differential attention",
    )
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--fixed", action="store_true", help="repeat at a fixed distance")
    parser.add_argument("--alphabet", choices=sorted(ALPHABETS), default="letters")
    parser.add_argument("--save", metavar="DIR", help="save the trained model here (save_pretrained)")
    args = parser.parse_args()

    torch.manual_seed(0)
    model = build(args.kind, "tiny", where_applicable={"sliding_window": 16})  # width 128, 4 layers
    alphabet = ALPHABETS[args.alphabet]
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.1, betas=(0.9, 0.95))
    generator = torch.Generator().manual_seed(0)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        ids, mask = copy_batch(generator, not args.fixed, alphabet)
        with torch.autocast("cpu", torch.bfloat16):
            logits = model(ids).logits[:, :-1].float()
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, BYTE_VOCAB_SIZE), ids[:, 1:].reshape(-1))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            asked = mask[:, 1:]
            accuracy = (logits.argmax(-1)[asked] == ids[:, 1:][asked]).float().mean()
            print(
                f"{args.kind} step {step}: loss {loss.item():.3f}, copy accuracy {accuracy:.3f} "
                f"(chance {1 / len(alphabet):.3f}), {time.perf_counter() - start:.0f} s",
                flush=True,
            )
    if args.save:  # e.g. as train.init_from of the needle recipe (yoco/recipes/needle.toml)
        model.save_pretrained(args.save)
        load_tokenizer("bytes").save_pretrained(args.save)


if __name__ == "__main__":
    main()
