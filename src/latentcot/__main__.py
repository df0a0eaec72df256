"""`python -m latentcot` is the same as the `latentcot` command."""

from latentcot.cli.main import entry

if __name__ == "__main__":
    entry()
