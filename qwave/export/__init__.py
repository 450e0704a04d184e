"""Take a packed qwave model out of qwave: an ONNX file for ONNX Runtime (``onnx``) and dependency-free C99 sources
(``c``), both computing qwave's own recipe from the stored bytes (``model`` reads an artifact for them)."""
