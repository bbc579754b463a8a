from setuptools import find_packages, setup

setup(
    name="fcn_graph",
    version="0.1.0",
    description="FCN-8s semantic segmentation as a TF1-style graph on tf.compat.v1",
    packages=find_packages(include=["fcn_graph", "fcn_graph.*"]),
    python_requires=">=3.9",
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "numpy>=1.23",
        "scipy>=1.9",
        "opencv-python-headless>=4.6",
        "commentjson>=0.9",
        "Pillow>=9.0",
        "h5py>=3.8",  # port keras-h5
        "pycocotools>=2.0.6",  # data.kind coco: polygons and RLE masks
    ],
    extras_require={
        # python -m fcn_graph.export --format onnx and --engine onnxruntime, and the LiteRT
        # interpreter of --format tflite (SavedModel and frozen exports need only TensorFlow)
        "export": ["onnx>=1.15", "onnxruntime>=1.17", "ai-edge-litert>=2.0"],
        # --engine openvino (the ONNX model in OpenVINO's CPU plugin), and the suite's
        # OpenVINO contenders
        "openvino": ["onnx>=1.15", "onnxruntime>=1.17", "openvino>=2026.4"],
        "dev": ["pytest>=7", "pytest-xdist>=3", "ruff>=0.4", "import-linter>=2.1", "onnx>=1.15",
                "onnxruntime>=1.17", "ai-edge-litert>=2.0", "openvino>=2026.4"],
        # tools/mutation.sh (not run by CI)
        "mutation": ["mutmut>=3.8,<4", "pytest>=7"],
    },
)
