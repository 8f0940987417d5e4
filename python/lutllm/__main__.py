"""`python -m lutllm ...`: the same command line as the `lutllm` script."""
from lutllm.cli import main

main(prog_name="lutllm")
