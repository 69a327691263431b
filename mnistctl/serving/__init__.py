"""A trained model in production and on screen: the SavedModel export and ``Predictor``, the
HTTP server and its request batching, picture preparation, and the live page."""
