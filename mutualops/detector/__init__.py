"""The thin harmonized detector built on mutualops' ops: FCOS and RetinaNet heads
with the mutual-label switches (`model`), and its synthetic-shapes data layer
(`data`). `mutualops.train`, `mutualops.evaluate` and `mutualops.demo` drive it."""
