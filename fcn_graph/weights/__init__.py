"""Weights and checkpoints: MatConvNet `.mat` and Keras `.h5` readers, checkpoint
files found without TensorFlow (`checkpoint_files`), reading, restoring and
saving checkpoints (`checkpoint`), and converting between formats
(`conversion`)."""
