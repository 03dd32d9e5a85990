"""jaxtl: transfer learning with BERT-family Transformers in JAX/Flax."""

__version__ = "0.1.0"
