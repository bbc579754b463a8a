"""Datasets: the layouts and their tf.data pipelines (`datasets`), the generated
shapes dataset (`shapes`), and reading and writing images and labels
(`image_files`)."""
