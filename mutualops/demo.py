"""`python -m mutualops.demo`: the demo (a baseline and a mutual FCOS trained and compared), mutualops.detector.demo."""

from .detector.demo import main

if __name__ == "__main__":
    main()
