"""Running a checkpoint: the TensorFlow and ONNX Runtime segmenters, the int8
model, the cache of converted models, tiling, the infer pipeline, and the
export writers."""
