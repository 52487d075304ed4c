"""The thin harmonized detector built on mutualops' ops (issue 6, in progress):
for now its data layer, `mutualops.detector.data`."""
