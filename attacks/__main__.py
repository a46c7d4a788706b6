"""`python -m attacks`: the audit CLI, in a process of its own (see attacks/cli.py). `dpstream audit` execs
this module, so its usage lines give that name (which works wherever `python -m attacks` does)."""

from attacks.cli import app

if __name__ == "__main__":
    app(prog_name="dpstream audit")
