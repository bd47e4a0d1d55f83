"""Model training, quantization, calibration and evaluation (``python -m inference.training``).

Needs the ``train`` extra (TensorFlow, matplotlib) for training and plotting; the dataset and
evaluation code use only the runtime dependencies, and evaluation always measures the int8
model through LiteRT, as the gate runs it. See docs/retraining.md.
"""

__all__: list[str] = []
