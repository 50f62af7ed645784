"""jaxens: deep ensembles as one stacked parameter pytree, trained in one jitted step."""

__version__ = "0.1.0"
