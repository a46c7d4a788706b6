"""`python -m attacks`: the audit CLI, in a process of its own (see attacks/cli.py)."""

from attacks.cli import app

if __name__ == "__main__":
    app(prog_name="python -m attacks")
