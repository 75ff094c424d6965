"""`python -m tensorllm.cli ...` (also what torchrun runs for a distributed search)."""

from tensorllm.cli.app import main

main()
