"""`python -m mutualops.train`: the detector's training command, mutualops.detector.train."""

from .detector.train import main

if __name__ == "__main__":
    main()
