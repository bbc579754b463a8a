"""This machine: its CPU features (`cpuinfo`), the one place that chooses device,
engine, kernel set, oneDNN and precision (`choice`), the timing of the kernel
forms behind that choice (`kernel_timing`), session settings, TensorFlow's log
filter and process memory."""
