"""Import TensorFlow quietly, once. Only modules that build or run graphs import this."""

import os

# TensorFlow's C++ start-up chatter (oneDNN notices, missing CUDA drivers) is noise for our
# users; set TF_CPP_MIN_LOG_LEVEL yourself to see it.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
# `import tensorflow` also imports Keras 3 whole, for Keras' own optimizers' sake (about 1.5 s
# of a 6 s import on a 2-core EPYC), unless told to look for the legacy tf_keras instead, which
# is not installed: then nothing is imported. mnistctl builds its graphs with tf.compat.v1 alone.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")


def _import_quietly():
    # Some notices are printed straight to file descriptor 2 before TensorFlow's logging is
    # set up, so no setting hides them: silence the descriptor for the import only.
    saved, devnull = os.dup(2), os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    try:
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    return tensorflow


tf = _import_quietly()
tf.get_logger().setLevel("ERROR")
tf.compat.v1.disable_eager_execution()

__all__ = ["tf"]
