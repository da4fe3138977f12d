"""Model families, one room each: `lstm` (the Keras example's network and its growth) and `transformer`. See
model.py for the interface every room offers."""
