"""The network, written once (`definition`: the VGG19 or VGG16 table, one loop, the heads),
and its forms: the TensorFlow ops (`tf_layers`), the CPU layer forms
(`cpu_layers`), ONNX nodes (`onnx_layers`), the FLOP count (`flops`), and the
model description (`spec`). Nothing here decides what runs on this machine."""
