"""`python -m cpo_cli` — also what `accelerate launch -m cpo_cli train RECIPE` runs."""

from cpo_cli.cli import main

if __name__ == "__main__":
    main()
