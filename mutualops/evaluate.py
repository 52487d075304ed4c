"""`python -m mutualops.evaluate`: the detector's evaluation command, mutualops.detector.evaluate."""

from .detector.evaluate import main

if __name__ == "__main__":
    main()
