"""cpo: a declarative CLI for Contrastive Preference Optimization."""

__version__ = "0.1.0"
