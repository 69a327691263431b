"""mnistctl: the "TensorFlow and deep learning, without a PhD" walk-through as an experiment runner."""

__version__ = "0.1.0"
