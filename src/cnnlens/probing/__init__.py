"""What layers and units have learned: the layer atlas, channel Shapley values, the image patches a
channel responds to, and their figures."""
