"""The ops, one module per op family: argument checks, the call of torch.ops.mutualops.*, fake kernels and
autograd registrations. Users import them from the top-level package (mutualops.box_iou, ...)."""
