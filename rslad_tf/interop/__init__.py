"""Models in and out of the toolkit: PyTorch teachers to `.keras` (`convert_teacher`) and
students to SavedModel / LiteRT / ONNX (`export`, loaded back by `artifacts`)."""
