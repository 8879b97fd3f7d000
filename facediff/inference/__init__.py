"""Using a trained model without Lightning: the Generator and figures that need a model."""
