"""Lightning glue: module, callbacks (incl. the evaluation callback), EMA, training run."""
