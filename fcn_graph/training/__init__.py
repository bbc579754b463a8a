"""Training and scoring: the training loop (`loop`), the evaluator that streams a
split into one confusion matrix (`evaluator`), the metrics, the training
curves, and the log-folder lock (`runlock`)."""
