"""`python -m mutualops.export`: the detector's ONNX export command, mutualops.detector.export."""

from ..detector.export import main

main()
