"""The buckets of the gradient exchange, without TensorFlow.

The gradients are all-reduced in buckets as the backward pass produces them,
the last layer's first, so that the exchange of the late layers' gradients
runs while the backward pass of the early layers goes on. A bucket is a run
of consecutive gradients of at most a cap of bytes; a gradient larger than
the cap is a bucket of its own (a gradient is never split).
"""


def plan_buckets(sizes, cap):
    """The buckets of gradients of `sizes` bytes, taken in the given order:
    a list of lists of indices into `sizes`, each bucket the longest run of
    the next gradients whose bytes add up to at most `cap` (at least one
    gradient). Every index appears exactly once, in order.

        plan_buckets([3, 5, 2, 9, 1], cap=8)  ->  [[0, 1], [2], [3], [4]]
    """
    if cap <= 0:
        raise ValueError(f"bucket cap: expected a positive number of bytes, found {cap}")
    buckets, current, filled = [], [], 0
    for index, size in enumerate(sizes):
        if current and filled + size > cap:
            buckets.append(current)
            current, filled = [], 0
        current.append(index)
        filled += size
    if current:
        buckets.append(current)
    return buckets


def exchange_buckets(sizes, cap):
    """The buckets of the exchange of gradients of `sizes` bytes listed in
    the order of their layers from the input: `plan_buckets` over them from
    the last layer's down, as indices into `sizes`, first bucket first.

        exchange_buckets([3, 5, 2, 9, 1], cap=8)  ->  [[4], [3], [2, 1], [0]]
    """
    last = len(sizes) - 1
    return [[last - i for i in bucket] for bucket in plan_buckets(sizes[::-1], cap)]
