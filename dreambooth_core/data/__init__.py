"""Training data: safe image decoding and captions, class images, bucketing and caches."""
