"""Training and scoring: the strict config of a run (`config`), the training
loop (`loop`), the evaluator that streams a split into one confusion matrix
(`evaluator`), the metrics, the training curves, and the log-folder lock
(`runlock`)."""
