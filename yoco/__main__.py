"""`python -m yoco ...` is the `yoco` command (handy under `torchrun -m yoco train ...`)."""

from yoco.cli import main

main()
