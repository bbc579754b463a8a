"""Training across processes and machines: TF_CONFIG and TensorFlow's
collective all-reduce (`distributed`), and the process group behind
`python -m fcn_graph.launch` (`procgroup`)."""
